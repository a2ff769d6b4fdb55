"""The coder's own exception types."""

from __future__ import annotations


class CorruptStreamError(ValueError):
    """Raised when bytes given to `coding.decode` (`coding.decode_channels`) are not a stream
    that `coding.encode` (`coding.encode_channels`) wrote.

    Truncated, bit-flipped and random inputs all end here: the decoder validates every field
    and every code it reads instead of trusting the data, so it never crashes, hangs, or
    allocates more than a bound derived from the stream's own length.
    """
