"""Architectures as plain data, and the search spaces they live in.

An :class:`Architecture` is a frozen, hashable mapping from dimension names to integers or tuples of integers,
for example ``{"ks": [7, 5, ...], "e": [6, 3, ...], "d": [4, 2, ...], "r": 16}`` (the Once-for-All format).
It knows nothing about networks. A :class:`SearchSpace` lists the allowed choices per dimension, validates
architectures against them, and gives searchers what they need: sampling, enumeration, mutation, crossover,
a canonical form and a vector encoding.

Per-block dimensions can be *gated* by a depth dimension (:class:`DepthGate`): with ``d[u] = 2`` only the first
two blocks of unit ``u`` run, so the values of the other blocks do not change the network. The canonical form
sets those inactive values to a fixed choice, so two architectures that build the same network compare equal.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nasforge.errors import ArchitectureError

__all__ = ["Architecture", "Dimension", "DepthGate", "SearchSpace", "Gene"]

Gene = int | tuple[int, ...]
RngLike = random.Random | int | None


def _as_rng(rng: RngLike) -> random.Random:
    return rng if isinstance(rng, random.Random) else random.Random(rng)


@dataclass(frozen=True)
class Architecture:
    """An immutable architecture: ordered ``(name, value)`` genes; a value is an int or a tuple of ints."""

    genes: tuple[tuple[str, Gene], ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Architecture:
        """Build from ``{"name": int | [int, ...]}``; raises :class:`ArchitectureError` on other types."""
        if not isinstance(data, Mapping):
            raise ArchitectureError(
                f"an architecture must be a JSON object of name -> int or list of ints, got {type(data).__name__}"
            )
        genes: list[tuple[str, Gene]] = []
        for name, value in data.items():
            genes.append((str(name), _coerce_gene(str(name), value)))
        return cls(tuple(genes))

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        """Parse a JSON object (see :meth:`from_dict`)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArchitectureError(f"architecture is not valid JSON ({exc.msg} at char {exc.pos})") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, int | list[int]]:
        """Plain JSON-able dict (tuples become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.genes}

    def to_json(self) -> str:
        """Compact JSON text that :meth:`from_json` reads back to an equal architecture."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.genes)

    def __getitem__(self, name: str) -> Gene:
        for k, v in self.genes:
            if k == name:
                return v
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(k == name for k, _ in self.genes)

    def replace(self, **changes: Gene | Sequence[int]) -> Architecture:
        """A copy with some genes replaced (lists are converted to tuples)."""
        data: dict[str, Any] = dict(self.genes)
        data.update(changes)
        return Architecture.from_dict(data)

    def __str__(self) -> str:
        return self.to_json()


def _coerce_gene(name: str, value: Any) -> Gene:
    if isinstance(value, bool):
        raise ArchitectureError(f"architecture field {name!r} must be an int or a list of ints, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        out = []
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer, float)) or (
                isinstance(v, float) and not v.is_integer()
            ):
                raise ArchitectureError(f"architecture field {name!r}[{i}] must be an int, got {v!r}")
            out.append(int(v))
        return tuple(out)
    raise ArchitectureError(f"architecture field {name!r} must be an int or a list of ints, got {value!r}")


@dataclass(frozen=True)
class Dimension:
    """One searchable dimension.

    Args:
        name: field name in the architecture (``"ks"``, ``"e"``, ``"d"``, ``"r"``, ...).
        choices: allowed integer values, ascending.
        length: number of positions for a per-block/per-unit dimension; ``None`` for a scalar.
        default: value used when an architecture omits this field (scalars only), e.g. the resolution.
        description: human-readable meaning.
    """

    name: str
    choices: tuple[int, ...]
    length: int | None = None
    default: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError(f"dimension {self.name!r} has no choices")
        object.__setattr__(self, "choices", tuple(sorted(int(c) for c in self.choices)))
        if self.default is not None and self.default not in self.choices:
            raise ValueError(f"default {self.default} of dimension {self.name!r} is not one of {self.choices}")

    @property
    def is_scalar(self) -> bool:
        return self.length is None

    @property
    def positions(self) -> int:
        return 1 if self.length is None else self.length


@dataclass(frozen=True)
class DepthGate:
    """Per-unit depth that switches off the trailing blocks of each unit.

    Block ``i`` of a gated dimension belongs to unit ``i // max_depth`` and is active iff
    ``i % max_depth < arch[depth][unit]``.
    """

    depth: str
    blocks: tuple[str, ...]
    max_depth: int


@dataclass(frozen=True)
class SearchSpace:
    """The allowed choices of every dimension of a supernet family member."""

    name: str
    dims: tuple[Dimension, ...]
    gates: tuple[DepthGate, ...] = field(default=())

    def __post_init__(self) -> None:
        names = [d.name for d in self.dims]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate dimension names in space {self.name!r}: {names}")
        for gate in self.gates:
            depth = self.dim(gate.depth)
            for b in gate.blocks:
                if self.dim(b).positions != depth.positions * gate.max_depth:
                    raise ValueError(f"gated dimension {b!r} needs {depth.positions * gate.max_depth} positions")
            if max(depth.choices) > gate.max_depth:
                raise ValueError(f"depth choices {depth.choices} exceed max_depth {gate.max_depth}")

    # -- lookup ---------------------------------------------------------------------------------------------
    def dim(self, name: str) -> Dimension:
        """The dimension called ``name`` (KeyError if absent)."""
        for d in self.dims:
            if d.name == name:
                return d
        raise KeyError(f"space {self.name!r} has no dimension {name!r}; it has {[d.name for d in self.dims]}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dims)

    def _gate_of(self, name: str) -> DepthGate | None:
        return next((g for g in self.gates if name in g.blocks), None)

    def is_active(self, arch: Architecture, name: str, index: int) -> bool:
        """Whether position ``index`` of dimension ``name`` affects the network built from ``arch``."""
        gate = self._gate_of(name)
        if gate is None:
            return True
        depths = arch[gate.depth]
        assert isinstance(depths, tuple)
        return index % gate.max_depth < depths[index // gate.max_depth]

    # -- validation -----------------------------------------------------------------------------------------
    def validate(self, arch: Architecture | Mapping[str, Any] | str) -> Architecture:
        """Return ``arch`` as a checked :class:`Architecture` (fields in space order, defaults filled in).

        Raises:
            ArchitectureError: naming the bad field, position and the allowed values.
        """
        if isinstance(arch, str):
            arch = Architecture.from_json(arch)
        elif not isinstance(arch, Architecture):
            arch = Architecture.from_dict(arch)
        unknown = [n for n in arch.names if n not in self.names]
        if unknown:
            raise ArchitectureError(
                f"unknown architecture field(s) {unknown} for space {self.name!r}; allowed fields: {list(self.names)}"
            )
        genes: list[tuple[str, Gene]] = []
        for d in self.dims:
            genes.append((d.name, self._check_gene(d, arch)))
        return Architecture(tuple(genes))

    def _check_gene(self, d: Dimension, arch: Architecture) -> Gene:
        if d.name not in arch:
            if d.default is not None:
                return d.default
            raise ArchitectureError(f"architecture is missing field {d.name!r} ({self._describe_dim(d)})")
        value = arch[d.name]
        if d.is_scalar:
            if isinstance(value, tuple):
                if len(value) != 1:
                    raise ArchitectureError(f"architecture field {d.name!r} must be a single int from {d.choices}")
                value = value[0]
            if value not in d.choices:
                raise ArchitectureError(
                    f"architecture field {d.name!r} = {value} is not allowed in space {self.name!r}; "
                    f"choose one of {d.choices}"
                )
            return value
        if not isinstance(value, tuple) or len(value) != d.length:
            got = len(value) if isinstance(value, tuple) else "a single int"
            raise ArchitectureError(
                f"architecture field {d.name!r} needs a list of {d.length} values (got {got}); {self._describe_dim(d)}"
            )
        for i, v in enumerate(value):
            if v not in d.choices:
                raise ArchitectureError(
                    f"architecture field {d.name!r}[{i}] = {v} is not allowed in space {self.name!r}; "
                    f"choose one of {d.choices}"
                )
        return value

    @staticmethod
    def _describe_dim(d: Dimension) -> str:
        shape = "an int" if d.is_scalar else f"a list of {d.length} ints"
        return f"{shape}, each one of {d.choices}"

    def canonical(self, arch: Architecture | Mapping[str, Any] | str) -> Architecture:
        """Validated copy in which inactive blocks hold their dimension's largest choice."""
        arch = self.validate(arch)
        changes: dict[str, tuple[int, ...]] = {}
        for gate in self.gates:
            for name in gate.blocks:
                values = arch[name]
                assert isinstance(values, tuple)
                top = self.dim(name).choices[-1]
                changes[name] = tuple(
                    v if self.is_active(arch, name, i) else top for i, v in enumerate(values)
                )
        return arch.replace(**changes) if changes else arch

    # -- corner architectures, sampling and enumeration -------------------------------------------------------
    def _uniform(self, pick: int) -> Architecture:
        genes: list[tuple[str, Gene]] = []
        for d in self.dims:
            value = d.choices[pick]
            genes.append((d.name, value if d.is_scalar else (value,) * d.positions))
        return self.canonical(Architecture(tuple(genes)))

    def largest(self) -> Architecture:
        """Every dimension at its largest choice."""
        return self._uniform(-1)

    def smallest(self) -> Architecture:
        """Every dimension at its smallest choice."""
        return self._uniform(0)

    def sample(self, rng: RngLike = None) -> Architecture:
        """A uniformly random choice per position (canonicalised)."""
        r = _as_rng(rng)
        genes: list[tuple[str, Gene]] = []
        for d in self.dims:
            if d.is_scalar:
                genes.append((d.name, r.choice(d.choices)))
            else:
                genes.append((d.name, tuple(r.choice(d.choices) for _ in range(d.positions))))
        return self.canonical(Architecture(tuple(genes)))

    def _factors(self) -> list[list[dict[tuple[str, int], int]]]:
        """Independent groups of positions; the space is the product of the groups' alternatives."""
        gated = {b for g in self.gates for b in g.blocks} | {g.depth for g in self.gates}
        factors: list[list[dict[tuple[str, int], int]]] = []
        for d in self.dims:
            if d.name in gated:
                continue
            for i in range(d.positions):
                factors.append([{(d.name, i): c} for c in d.choices])
        for gate in self.gates:
            depth = self.dim(gate.depth)
            for unit in range(depth.positions):
                factors.append(self._unit_alternatives(gate, depth, unit))
        return factors

    def _unit_alternatives(self, gate: DepthGate, depth: Dimension, unit: int) -> list[dict[tuple[str, int], int]]:
        alts: list[dict[tuple[str, int], int]] = []
        for dval in depth.choices:
            active = [(b, unit * gate.max_depth + j) for b in gate.blocks for j in range(dval)]
            inactive = [(b, unit * gate.max_depth + j) for b in gate.blocks for j in range(dval, gate.max_depth)]
            fill = {pos: self.dim(pos[0]).choices[-1] for pos in inactive}
            for combo in itertools.product(*(self.dim(b).choices for b, _ in active)):
                alt = {(gate.depth, unit): dval, **fill}
                alt.update(dict(zip(active, combo, strict=True)))
                alts.append(alt)
        return alts

    def size(self, exclude: Iterable[str] = ()) -> int:
        """Number of distinct architectures (distinct networks), counted exactly.

        Args:
            exclude: names of dimensions to leave out of the count (held at one value), e.g. ``("r",)`` for the
                number of architectures without the input resolution, the figure Once-for-All quotes
                (``7371**5`` ~ 2.18e19 for its MobileNetV3 space). A depth dimension that gates other
                dimensions can only be excluded together with every dimension it gates.

        Returns:
            The product over the independent parts of the space of their number of distinct settings.

        Raises:
            ValueError: an excluded name is not a dimension of the space, or a gating depth is excluded without
                the dimensions it gates.
        """
        skip = self._excluded(exclude)
        gated = {b for g in self.gates for b in g.blocks} | {g.depth for g in self.gates}
        total = 1
        for d in self.dims:
            if d.name not in gated and d.name not in skip:
                total *= len(d.choices) ** d.positions
        for gate in self.gates:
            if gate.depth in skip:
                continue
            depth = self.dim(gate.depth)
            per_block = math.prod(len(self.dim(b).choices) for b in gate.blocks if b not in skip)
            per_unit = sum(per_block**dv for dv in depth.choices)
            total *= per_unit**depth.positions
        return total

    def _excluded(self, exclude: Iterable[str]) -> frozenset[str]:
        skip = frozenset([exclude] if isinstance(exclude, str) else exclude)
        unknown = sorted(skip - set(self.names))
        if unknown:
            raise ValueError(f"cannot exclude {unknown}: space {self.name!r} has dimensions {list(self.names)}")
        for gate in self.gates:
            kept = [b for b in gate.blocks if b not in skip]
            if gate.depth in skip and kept:
                raise ValueError(
                    f"cannot exclude depth {gate.depth!r} alone: it gates {kept}; exclude those too, or keep it"
                )
        return skip

    def enumerate(self, limit: int | None = None) -> Iterator[Architecture]:
        """Yield every distinct (canonical) architecture, at most ``limit`` of them."""
        factors = self._factors()
        for n, parts in enumerate(itertools.product(*factors)):
            if limit is not None and n >= limit:
                return
            merged: dict[tuple[str, int], int] = {}
            for p in parts:
                merged.update(p)
            yield self._from_positions(merged)

    def _from_positions(self, values: Mapping[tuple[str, int], int]) -> Architecture:
        genes: list[tuple[str, Gene]] = []
        for d in self.dims:
            if d.is_scalar:
                genes.append((d.name, values[(d.name, 0)]))
            else:
                genes.append((d.name, tuple(values[(d.name, i)] for i in range(d.positions))))
        return Architecture(tuple(genes))

    # -- evolution helpers ------------------------------------------------------------------------------------
    def mutate(self, arch: Architecture, rng: RngLike = None, prob: float = 0.1) -> Architecture:
        """Resample each position with probability ``prob`` (canonicalised)."""
        r = _as_rng(rng)
        arch = self.validate(arch)
        genes: list[tuple[str, Gene]] = []
        for d in self.dims:
            value = arch[d.name]
            if d.is_scalar:
                genes.append((d.name, r.choice(d.choices) if r.random() < prob else value))
            else:
                assert isinstance(value, tuple)
                genes.append((d.name, tuple(r.choice(d.choices) if r.random() < prob else v for v in value)))
        return self.canonical(Architecture(tuple(genes)))

    def crossover(self, a: Architecture, b: Architecture, rng: RngLike = None) -> Architecture:
        """Per-position uniform crossover of two parents (canonicalised)."""
        r = _as_rng(rng)
        a, b = self.validate(a), self.validate(b)
        genes: list[tuple[str, Gene]] = []
        for d in self.dims:
            va, vb = a[d.name], b[d.name]
            if d.is_scalar:
                genes.append((d.name, va if r.random() < 0.5 else vb))
            else:
                assert isinstance(va, tuple) and isinstance(vb, tuple)
                genes.append((d.name, tuple(x if r.random() < 0.5 else y for x, y in zip(va, vb, strict=True))))
        return self.canonical(Architecture(tuple(genes)))

    # -- encoding --------------------------------------------------------------------------------------------
    @property
    def encoding_size(self) -> int:
        return sum(d.positions * len(d.choices) for d in self.dims)

    def encode(self, arch: Architecture) -> np.ndarray:
        """One-hot vector (float32) per position; inactive gated positions are all zeros."""
        arch = self.validate(arch)
        out = np.zeros(self.encoding_size, dtype=np.float32)
        offset = 0
        for d in self.dims:
            value = arch[d.name]
            values = (value,) if isinstance(value, int) else value
            for i, v in enumerate(values):
                if self.is_active(arch, d.name, i):
                    out[offset + d.choices.index(v)] = 1.0
                offset += len(d.choices)
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-able summary: dimensions with choices and positions, and the exact size."""
        return {
            "name": self.name,
            "dimensions": [
                {"name": d.name, "choices": list(d.choices), "positions": d.positions, "description": d.description}
                for d in self.dims
            ],
            "size": self.size(),
        }
