"""INT8 quantization for exported nasforge models.

The quantization flow arrives with its own issue; this package exists so the layout and the wheel are stable.
"""

__all__: list[str] = []
