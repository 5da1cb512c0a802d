"""Plain group-L2 pruning vs graph-metanetwork (GMN) pruning at equal MACs and equal total finetune budget.

Protocol (written and fixed before any test accuracy of this version was looked at):

- Task: procedurally generated 8-class shapes (24x24, difficulty 0.9), one seed; its train / val / test splits
  are used for: train -- network training, pre-pruning finetunes, meta-training batches, every finetune;
  val -- only the choice of the metanetwork checkpoint, on the validation network; test -- only the reported
  accuracies.
- Family, prepared as the reference implementation prepares its data models: ResNet-20 (widths 8/16/32) trained
  10 epochs from independent initialisations, then pruned to 1.32x fewer MACs (group L2, 8 steps) and
  finetuned 2 epochs (the reference finetunes 40% of the training epochs; 20% here, for time). ``--networks``
  (2) of them meta-train the metanetwork, one more validates its checkpoints, ``--seeds`` (3) further ones are
  the test networks, each pruned by every method.
- Meta-training budget: ``--meta-steps`` (160) steps of ``--meta-batch`` (128) training images, AdamW 1e-3, task
  loss with eval-mode BN, 0.1 x the GroupNormPruner regulariser (alpha 16, recomputed every step). Every
  ``--meta-steps``/8 steps, and at step 0 (near-identity initialisation), the validation network is pruned with
  the candidate to 3x (gmn path below, without its finetunes) and finetuned 40 batches; the best validation
  accuracy picks the checkpoint. The same yardstick is reported for plain one-shot L2.
- Targets: 2x, 3x and 5x fewer MACs than the UNPRUNED ResNet-20 (the pre-pruned networks are pruned by the rest),
  every method through the same ``prune()`` call and target (met from below within 2%), channel counts multiples
  of 4.
- Equal TOTAL finetune budget E = ``--finetune-epochs`` (3) epochs per pruned model (SGD, cosine, lr 0.01):
  - l2:   one-shot group-L2 (mean normaliser) -> finetune E epochs
  - gmn:  metanetwork -> finetune 1 epoch -> ``gmn`` criterion (group L2, max normaliser) in ``--prune-steps``
          (16) small steps with no finetune between them (0 epochs) -> finetune E-1 epochs
  - iter: (``--ablation`` only; off in the full run, for time) gmn with an exact identity metanetwork
          (out_scale 0): the same schedule, steps and normaliser, so gmn - iter is what the metanetwork adds.
- Report: mean test accuracy per method and target; paired differences (gmn - l2; with the ablation also
  iter - l2, gmn - iter) over the test networks, mean and 95% t interval (n - 1 degrees of freedom). The JSON is
  rewritten after every test network, so a run cut short keeps its finished networks.
- Secondary: ORT CPU speed-up (1 thread, batch 1 and 32, ``--runs`` timed runs) divided by the MACs reduction. The
  machine's 2 cores are shared with other jobs, so these latencies are noisy.

Channel counts are kept multiples of 4 (``--round-to``): unaligned counts made a 3x-MACs-pruned net *slower* than
the unpruned one in onnxruntime on this CPU (0.68x), aligned ones 1.47x faster.

    OMP_NUM_THREADS=2 python benchmarks/prune.py     # full run (~25 min on 2 shared cores, ~6 without training)
    python benchmarks/prune.py --quick               # smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nasforge.data import load_data
from nasforge.export import export_onnx, get_profiler
from nasforge.prune import evaluate_accuracy, model_macs, prune, train_classifier
from nasforge.prune._gmn import MetaTrainConfig, meta_train, save_metanet
from nasforge.prune._metanet import GraphMetanetwork
from nasforge.prune_job import trained_family

PAIRS = (("gmn", "l2"), ("iter", "l2"), ("gmn", "iter"))
FT_LR = 0.01


def _latency(model: torch.nn.Module, shape: tuple[int, ...], batch: int, runs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_onnx(model.eval(), torch.randn(1, *shape), path, dynamic_batch=True, exporter="torchscript")
        return get_profiler("ort-cpu").measure(str(path), batch=batch, runs=runs, threads=1).median_ms


def _ci95(diffs: list[float]) -> tuple[float, float]:
    from scipy import stats

    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def _once(fn: Callable[[torch.nn.Module], None]) -> Callable[[torch.nn.Module], None]:
    """``fn`` on the first call only: prune() finetunes after the metanetwork and after every step; the protocol
    finetunes after the metanetwork only."""
    done: list[bool] = []

    def call(model: torch.nn.Module) -> None:
        if not done:
            done.append(True)
            fn(model)
    return call


def _keep(full_macs: int, net: torch.nn.Module, example: torch.Tensor, factor: float) -> str:
    """The target, relative to ``net``, that leaves ``full_macs / factor`` MACs."""
    return f"macs={full_macs / factor / model_macs(net, example):.6f}"


def _prune_one(method: str, net: torch.nn.Module, metanet: GraphMetanetwork, identity: GraphMetanetwork,
               target: str, args: argparse.Namespace, data: Any, seed: int) -> tuple[torch.nn.Module, Any]:
    """Prune and finetune one test network by ``method`` within the same total finetune budget."""
    example = data.val.x[:2]
    if method == "l2":
        pruned, rep = prune(net, example, target=target, criterion="l2", round_to=args.round_to)
        train_classifier(pruned, data.train, epochs=args.finetune_epochs, lr=FT_LR, seed=seed)
        return pruned, rep
    post_metanet = _once(lambda m: train_classifier(m, data.train, epochs=1, lr=FT_LR, seed=seed + 50))
    pruned, rep = prune(net, example, target=target, criterion="gmn", metanet=metanet if method == "gmn" else identity,
                        steps=args.prune_steps, finetune=post_metanet, round_to=args.round_to)
    train_classifier(pruned, data.train, epochs=args.finetune_epochs - 1, lr=FT_LR, seed=seed)
    return pruned, rep


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="shapes?n=5000&classes=8&difficulty=0.9")
    ap.add_argument("--size", type=int, default=24)
    ap.add_argument("--model", default="resnet20?widths=[8,16,32]")
    ap.add_argument("--networks", type=int, default=2, help="networks the metanetwork is trained on")
    ap.add_argument("--seeds", type=int, default=3, help="test networks pruned by every method (0: meta-train and "
                    "validate only, e.g. to scan --sparsity without touching a test network)")
    ap.add_argument("--factors", default="2,3,5", help="MACs reduction factors vs the unpruned architecture")
    ap.add_argument("--train-epochs", type=int, default=10)
    ap.add_argument("--pre-prune", type=float, default=1.32, help="family pre-pruning MACs factor (1 = plain)")
    ap.add_argument("--pre-prune-epochs", type=int, default=2)
    ap.add_argument("--ablation", action="store_true", help="also the identity-metanetwork ablation (iter)")
    ap.add_argument("--meta-steps", type=int, default=160)
    ap.add_argument("--meta-batch", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.1, help="weight of the group-sparsity meta-loss")
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--meta-lr", type=float, default=1e-3)
    ap.add_argument("--val-batches", type=int, default=40, help="finetune batches of the checkpoint choice")
    ap.add_argument("--prune-steps", type=int, default=16, help="iterative steps of the gmn path")
    ap.add_argument("--finetune-epochs", type=int, default=3, help="total finetune budget per pruned model")
    ap.add_argument("--round-to", type=int, default=4,
                    help="keep channel counts multiples of this (ORT CPU kernels slow down on odd counts)")
    ap.add_argument("--runs", type=int, default=30, help="timed ORT runs per latency (0: no latency)")
    ap.add_argument("--workdir", type=Path, default=Path("benchmarks/results/prune-networks"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/prune.json"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.data, args.size, args.networks, args.seeds, args.factors = "shapes?n=600&classes=4", 16, 1, 2, "2"
        args.train_epochs, args.pre_prune_epochs, args.meta_steps, args.finetune_epochs = 1, 1, 4, 2
        args.runs, args.prune_steps, args.val_batches, args.meta_batch = 10, 4, 4, 32
        args.out = args.out.with_name("prune-quick.json")
    return args


def _meta(args: argparse.Namespace, train_nets: list[torch.nn.Module], val_net: torch.nn.Module, data: Any,
          full_macs: int, factors: list[float]) -> Any:
    middle = factors[len(factors) // 2]
    cfg = MetaTrainConfig(steps=args.meta_steps, validate_every=max(2, args.meta_steps // 8), sparsity=args.sparsity,
                          alpha=args.alpha, lr=args.meta_lr, batch_size=args.meta_batch, prune_steps=args.prune_steps,
                          val_finetune_batches=args.val_batches, val_finetune_lr=FT_LR, round_to=args.round_to,
                          target=_keep(full_macs, val_net, data.val.x[:2], middle))
    print(f"meta-training {args.meta_steps} steps (checkpoints validated at {middle:g}x) ...", flush=True)
    meta = meta_train(train_nets, val_net, data.train, data.val, cfg,
                      on_step=lambda s, r: print(f"  meta {s}: {r}", flush=True) if "val_acc" in r else None)
    save_metanet(args.out.with_suffix(".metanet.pt"), meta.metanet, family=args.model, data=data.spec,
                 best_step=meta.best_step)
    return meta


def _row(i: int, f: float, method: str, pruned: torch.nn.Module, rep: Any, full_macs: int, base: dict[str, Any],
         args: argparse.Namespace, data: Any, shape: tuple[int, ...]) -> dict[str, Any]:
    row = {"network": i, "factor": f, "method": method, "test_acc": evaluate_accuracy(pruned, data.test),
           "base_test_acc": base["acc"], "macs_reduction": full_macs / rep.macs_after,
           "macs_reduction_vs_pre_pruned": rep.macs_before / rep.macs_after, "prune_steps": len(rep.steps),
           "aligned": not rep.steps[-1]["round_to_dropped"]}
    if args.runs > 0:
        for b in (1, 32):
            speed = base[b] / _latency(pruned, shape, b, args.runs)
            row[f"speedup_b{b}"] = speed
            row[f"speedup_per_macs_b{b}"] = speed * rep.macs_after / rep.macs_before
    return row


def _summary(rows: list[dict[str, Any]], factors: list[float], methods: list[str]) -> list[dict[str, Any]]:
    out = []
    for f in factors:
        pick = {m: [r for r in rows if r["factor"] == f and r["method"] == m] for m in methods}
        entry: dict[str, Any] = {"factor": f, **{f"{m}_acc": sum(r["test_acc"] for r in v) / len(v)
                                                 for m, v in pick.items()}}
        for a, b in (p for p in PAIRS if p[0] in methods and p[1] in methods):
            diffs = [x["test_acc"] - y["test_acc"] for x, y in zip(pick[a], pick[b], strict=True)]
            entry[f"{a}-{b}"], entry[f"{a}-{b}_ci95"] = _ci95(diffs)
        entry["macs_reduction"] = {m: [round(r["macs_reduction"], 3) for r in v] for m, v in pick.items()}
        out.append(entry)
    return out


def main() -> None:
    args = _args()
    torch.set_num_threads(2)
    t0 = time.time()
    data = load_data(args.data, image_size=args.size, seed=0)
    factors = [float(f) for f in args.factors.split(",")]
    count = args.networks + 1 + args.seeds
    nets = trained_family(args.model, data, count, args.train_epochs, args.workdir, 0, pre_prune=args.pre_prune,
                          pre_prune_epochs=args.pre_prune_epochs)
    train_nets, val_net, test_nets = nets[: args.networks], nets[args.networks], nets[args.networks + 1:]
    example, shape = data.val.x[:2], tuple(data.val.x.shape[1:])
    full_macs = model_macs(trained_family(args.model, data, 1, args.train_epochs, args.workdir, 0)[0], example)
    bases = [{"acc": evaluate_accuracy(n, data.test), **({b: _latency(n, shape, b, args.runs) for b in (1, 32)}
                                                        if args.runs > 0 else {})} for n in test_nets]
    print(f"{count} networks ready ({time.time() - t0:.0f} s); test networks: test acc {[b['acc'] for b in bases]}, "
          f"{full_macs / model_macs(nets[-1], example):.2f}x fewer MACs than the unpruned model", flush=True)
    meta = _meta(args, train_nets, val_net, data, full_macs, factors)
    step0 = meta.history[0]["val_acc"]
    print(f"metanetwork: best step {meta.best_step}; validation yardstick (prune + short finetune): one-shot L2 "
          f"{meta.baseline_val_acc:.4f}, step 0 {step0:.4f}, chosen {meta.best_val_acc:.4f} ({time.time() - t0:.0f} s)")
    if not test_nets:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "meta": {"best_step": meta.best_step, "best_val_acc": meta.best_val_acc,
                                                 "step0_val_acc": step0, "baseline_val_acc": meta.baseline_val_acc,
                                                 "history": meta.history}}, indent=2))
        print(f"validation only (--seeds 0): wrote {args.out}")
        return
    identity = GraphMetanetwork(node_dim=meta.metanet.node_dim, edge_dim=meta.metanet.edge_dim, hidden=8, layers=1,
                                out_scale=0.0)
    methods = ["l2", "gmn"] + (["iter"] if args.ablation else [])
    pairs = [p for p in PAIRS if p[0] in methods and p[1] in methods]
    rows: list[dict[str, Any]] = []
    for i, net in enumerate(test_nets):
        for f in factors:
            target = _keep(full_macs, net, example, f)
            for method in methods:
                pruned, rep = _prune_one(method, copy.deepcopy(net), meta.metanet, identity, target, args, data,
                                         200 + i)
                rows.append(_row(i, f, method, pruned, rep, full_macs, bases[i], args, data, shape))
                r = rows[-1]
                print(f"  net {i} {f:g}x {method}: test {r['test_acc']:.4f} (unpruned {bases[i]['acc']:.4f}), MACs "
                      f"{r['macs_reduction']:.2f}x, b1 speed-up {r.get('speedup_b1', float('nan')):.2f}x "
                      f"({time.time() - t0:.0f} s)", flush=True)
        summary = _summary(rows, factors, methods)
        result = {"args": {k: str(v) for k, v in vars(args).items()}, "protocol": __doc__, "full_macs": full_macs,
                  "base": bases, "test_networks_done": i + 1,
                  "meta": {"best_step": meta.best_step, "best_val_acc": meta.best_val_acc, "step0_val_acc": step0,
                           "baseline_val_acc": meta.baseline_val_acc, "history": meta.history},
                  "rows": rows, "summary": summary, "seconds": time.time() - t0}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print("\n| MACs cut | " + " | ".join(methods) + " | " + " | ".join(f"{a} - {b} (95% CI)" for a, b in pairs) + " |")
    print("|---" * (1 + len(methods) + len(pairs)) + "|")
    for s in summary:
        print(f"| {s['factor']:g}x | " + " | ".join(f"{s[f'{m}_acc']:.4f}" for m in methods) + " | "
              + " | ".join(f"{s[f'{a}-{b}']:+.4f} +/- {s[f'{a}-{b}_ci95']:.4f}" for a, b in pairs) + " |")
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
