"""The weight generator of :mod:`supermask.rng`, written in torch integer ops (imports torch).

Training initialises its modules with this, on the CPU or directly on a CUDA device, and gets
the float32 bits :func:`supermask.rng.generate` gives for ``uniform`` and
``signed_constant`` (tested bit for bit). ``normal`` agrees within the tolerance rule of
:func:`supermask.rng.verify`.

Torch has no unsigned 64-bit multiply, so each 64-bit Philox word is held as two 32-bit
halves in int64 tensors and the 64x64 -> 128-bit products are built from 16-bit limbs,
whose partial products stay far below 2**63: no step relies on integer overflow.
"""

from __future__ import annotations

import math

import torch

from . import rng

_M0 = 0xD2E7470EE14C6C93
_M1 = 0xCA5A826395121157
_W0 = 0x9E3779B97F4A7C15
_W1 = 0xBB67AE8584CAA73B
_ROUNDS = 10
_U32 = 0xFFFFFFFF
_U16 = 0xFFFF
_U64 = (1 << 64) - 1
_BLOCKS_PER_CHUNK = 1 << 18  # 2 M elements per chunk bounds the temporaries


def _mulhilo(m: int, xh: torch.Tensor, xl: torch.Tensor):
    """(hi, lo) halves of the 128-bit product m * x, each as (high32, low32) int64 tensors."""
    x = (xl & _U16, xl >> 16, xh & _U16, xh >> 16)
    mm = [(m >> (16 * i)) & _U16 for i in range(4)]
    limbs = []
    carry = None
    for k in range(7):
        col = None
        for i in range(max(0, k - 3), min(k, 3) + 1):
            term = x[k - i] * mm[i]
            col = term if col is None else col + term
        if carry is not None:
            col = col + carry
        limbs.append(col & _U16)
        carry = col >> 16
    limbs.append(carry)
    lo = (limbs[1] << 16 | limbs[0], limbs[3] << 16 | limbs[2])  # (low32, high32)
    hi = (limbs[5] << 16 | limbs[4], limbs[7] << 16 | limbs[6])
    return (hi[1], hi[0]), (lo[1], lo[0])


def philox4x64_10(ctr: list, key0: int, key1: int) -> list:
    """Philox4x64-10 of counter words ``ctr`` (four (high32, low32) int64 tensor pairs)."""
    c = list(ctr)
    k0, k1 = key0, key1
    for r in range(_ROUNDS):
        if r:
            k0, k1 = (k0 + _W0) & _U64, (k1 + _W1) & _U64
        (h0, l0) = _mulhilo(_M0, *c[0])
        (h1, l1) = _mulhilo(_M1, *c[2])
        c = [
            (h1[0] ^ c[1][0] ^ (k0 >> 32), h1[1] ^ c[1][1] ^ (k0 & _U32)),
            l1,
            (h0[0] ^ c[3][0] ^ (k1 >> 32), h0[1] ^ c[3][1] ^ (k1 & _U32)),
            l0,
        ]
    return c


def philox_words(key0: int, key1: int, first_block: int, num_blocks: int, device) -> list:
    """Blocks ``first_block .. first_block + num_blocks - 1`` of a stream (counters b + 1)."""
    ctr = torch.arange(first_block + 1, first_block + 1 + num_blocks, dtype=torch.int64, device=device)
    zero = torch.zeros_like(ctr)
    return philox4x64_10([(ctr >> 32, ctr & _U32), (zero, zero), (zero, zero), (zero, zero)], key0, key1)


def _halves(key0: int, key1: int, first_block: int, num_blocks: int, device) -> torch.Tensor:
    """32-bit element values (as int64 in [0, 2**32)) for 8 * num_blocks elements."""
    words = philox_words(key0, key1, first_block, num_blocks, device)
    parts = []
    for high, low in words:
        parts += [low, high]
    return torch.stack(parts, dim=1).reshape(-1)


def generate_torch(seed: int, name: str, shape, distribution: str, scale: float,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Regenerate a tensor's initial weights as a float32 torch tensor on ``device``.

    Same arguments and contract as :func:`supermask.rng.generate`.
    """
    if distribution not in rng.DISTRIBUTIONS:
        raise rng.InitSpecError(f"unknown distribution {distribution!r}")
    seed = rng._check_seed(seed)
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    scale32 = torch.tensor(scale, dtype=torch.float32)
    step = scale32 * torch.tensor(2.0**-24, dtype=torch.float32)  # exact power-of-two scaling
    key1, aux1 = rng.tensor_key(name), rng.tensor_key(name + "\x00normal")
    out = torch.empty(n, dtype=torch.float32, device=device)
    total_blocks = -(-n // 8)
    for b0 in range(0, total_blocks, _BLOCKS_PER_CHUNK):
        nb = min(_BLOCKS_PER_CHUNK, total_blocks - b0)
        a, b = 8 * b0, min(8 * (b0 + nb), n)
        h = _halves(seed, key1, b0, nb, device)[: b - a]
        signed = h - ((h >> 31) << 32)  # the int32 value of h
        if distribution == "uniform":
            t = (signed >> 7) | 1
            out[a:b] = t.to(torch.float32) * step.to(device)
        elif distribution == "signed_constant":
            t = (signed >> 31) | 1
            out[a:b] = t.to(torch.float32) * scale32.to(device)
        else:
            g = _halves(seed, aux1, b0, nb, device)[: b - a]
            u1 = ((h & 0x7FFFFFFF).to(torch.float64) + 1.0) * 2.0**-31
            u2 = g.to(torch.float64) * 2.0**-32
            mag = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((math.pi / 2.0) * u2) * float(scale32)
            out[a:b] = torch.where(signed < 0, -mag, mag).to(torch.float32)
    return out.reshape(shape)
