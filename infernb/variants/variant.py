"""``Variant``: an attention variant written as Python functions, the one source of truth for the reference
(evaluated on index tensors) and the kernels (traced to CUDA)."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import struct
from typing import Callable

import torch

from ..errors import InputError
from .codegen import Generated, c_identifier, generate
from .trace import TraceError

#: Block size (query tokens, keys) of :meth:`Variant.block_masks`: 64 keys, the prefill kernel's K/V stage.
BLOCK_STRUCTURE = (16, 64)
#: Block structures kept (least recently used dropped first), keyed by the variant's fingerprint and the shape.
BLOCK_MASK_CACHE = 16
_BLOCK_MASKS: dict = {}

@dataclasses.dataclass(frozen=True, eq=False)
class Variant:
    """An attention variant.

    Args:
        name: stable id used in kernel cache keys, plot legends and test ids (``sliding_window_128``).
        score_mod: ``score_mod(score, b, h, q_idx, kv_idx, *params) -> score`` or ``None`` (identity).
        mask_mod: ``mask_mod(b, h, q_idx, kv_idx, *params) -> bool`` or ``None`` (all visible).
        params: scalars the mods take as extra arguments, by name (``def score_mod(s, b, h, q, kv, cap)``).
        runtime: names of ``params`` passed to kernels at run time (changing them does not recompile); the
            others are compiled in as constants.
        softmax: ``False`` for sigmoid attention (``out = sum_j sigmoid(score_ij) v_j``).
        cuda_score_mod, cuda_mask_mod: raw CUDA bodies (see ``kernels/include/infernb/variant.cuh``) for hooks
            tracing cannot express; the Python mods still define the reference.
        window_left: a promise that ``mask_mod`` hides every key more than ``window_left`` positions left of the
            query (``-1``: no such promise). Planners use it to skip the pages outside the window; the mask
            itself is still applied exactly.

    Indices follow :mod:`infernb.reference`: ``q_idx`` is the query's position in its request
    (``kv_len - qo_len + i``), ``kv_idx`` the key's. Tensors the mods capture (ALiBi slopes, document ids,
    bias tables) are indexed with traced indices and become kernel arguments.
    """

    name: str
    score_mod: Callable | None = None
    mask_mod: Callable | None = None
    params: dict = dataclasses.field(default_factory=dict)
    runtime: frozenset = frozenset()
    softmax: bool = True
    cuda_score_mod: str | None = None
    cuda_mask_mod: str | None = None
    window_left: int = -1

    def __post_init__(self):
        object.__setattr__(self, "runtime", frozenset(self.runtime))
        object.__setattr__(self, "params", dict(self.params))
        if not self.name or not isinstance(self.name, str):
            raise InputError(f"Variant.name: expected a non-empty string, got {self.name!r}")
        for r in self.runtime:
            if r not in self.params:
                raise InputError(f"Variant.runtime: `{r}` is not one of the params {sorted(self.params)}")
        for label, fn, n in (("score_mod", self.score_mod, 5), ("mask_mod", self.mask_mod, 4)):
            if fn is None:
                continue
            if not callable(fn):
                raise InputError(f"Variant.{label}: expected a function, got {type(fn).__name__}")
            names = list(inspect.signature(fn).parameters)
            if len(names) < n:
                raise InputError(f"Variant.{label} must take {n} arguments "
                                 f"({'score, ' if n == 5 else ''}b, h, q_idx, kv_idx), got {names}")
            for extra in names[n:]:
                if extra not in self.params:
                    raise InputError(f"Variant.{label} takes `{extra}` but params has no such entry "
                                     f"(params: {sorted(self.params)})")
        # trace now, so untraceable Python fails where the variant is defined
        self.generated  # noqa: B018

    # ------------------------------------------------------------------ the reference side
    def with_params(self, **values) -> "Variant":
        """The same variant with new parameter values (runtime ones keep the compiled kernel)."""
        unknown = set(values) - set(self.params)
        if unknown:
            raise InputError(f"with_params: unknown parameters {sorted(unknown)} (have {sorted(self.params)})")
        new = dict(self.params)
        for k, v in values.items():            # a parameter keeps its type (and so the kernel's argument layout)
            old = self.params[k]
            if isinstance(old, bool):
                v = bool(v)
            elif isinstance(old, int):
                if float(v) != int(v):
                    raise InputError(f"with_params: `{k}` is an integer parameter, got {v!r}")
                v = int(v)
            else:
                v = float(v)
            new[k] = v
        return dataclasses.replace(self, params=new)

    def bound_mods(self) -> tuple[Callable | None, Callable | None]:
        """``(score_mod, mask_mod)`` with the parameters bound: the FlexAttention signatures."""
        def bind(fn, n):
            if fn is None:
                return None
            extra = {k: self.params[k] for k in list(inspect.signature(fn).parameters)[n:]}
            return functools.partial(fn, **extra) if extra else fn
        return bind(self.score_mod, 5), bind(self.mask_mod, 4)

    def reference_kwargs(self) -> dict:
        """Keyword arguments for :func:`infernb.reference.attention`: ``score_mod``, ``mask_mod``, ``softmax``."""
        s, m = self.bound_mods()
        return dict(score_mod=s, mask_mod=m, softmax=self.softmax)

    def evaluate(self, scores: torch.Tensor, *, q_offset: int = 0,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the Python mods to ``scores`` ``[B, H, Q, K]`` on the index grid (``q_idx = q + q_offset``).
        ``b`` is the batch index of the grid (0..B-1). Returns ``(modified scores [B, H, Q, K] dtype,
        mask [B, H, Q, K] bool)``: what the probe kernel computes."""
        B, H, Q, K = scores.shape
        dev = scores.device
        bi = torch.arange(B, device=dev)[:, None, None, None]
        hi = torch.arange(H, device=dev)[None, :, None, None]
        qi = torch.arange(Q, device=dev)[None, None, :, None] + q_offset
        ki = torch.arange(K, device=dev)[None, None, None, :]
        s_fn, m_fn = self.bound_mods()
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype if dtype.is_floating_point else old)
        try:
            s = scores.to(dtype)
            out = s if s_fn is None else torch.as_tensor(s_fn(s, bi, hi, qi, ki), dtype=dtype, device=dev).expand(B, H, Q, K)
            mask = (torch.ones(B, H, Q, K, dtype=torch.bool, device=dev) if m_fn is None
                    else torch.as_tensor(m_fn(bi, hi, qi, ki), device=dev).bool().expand(B, H, Q, K))
        finally:
            torch.set_default_dtype(old)
        return out.contiguous(), mask.contiguous()

    def block_mask(self, M: int, N: int, block: tuple[int, int], *, b: int = 0, h: int = 0):
        """The mask as a :class:`~infernb.layout.BlockSparse` (``[M, N]``, append convention), evaluated block by block."""
        from ..layout import BlockSparse

        _, m = self.bound_mods()
        if m is None:
            m = lambda bb, hh, q, k: torch.ones_like(q + k, dtype=torch.bool)  # noqa: E731
        return BlockSparse.from_mask_mod(m, M, N, block, b=b, h=h)

    def block_masks(self, qo_lens, kv_lens, *, num_qo_heads: int, block: tuple[int, int] = BLOCK_STRUCTURE) -> list:
        """The variant's block structure: per request a :class:`~infernb.layout.BlockSparse` ``[qo_len, kv_len]``
        (append convention, ``b`` = the request's index) whose listed blocks hold a visible pair for some query
        head, and whose *full* blocks are visible in every pair for every head (kernels skip ``mask_mod`` there).
        ``partial_masks`` hold the union over heads (the kernels evaluate ``mask_mod`` per head on partial blocks).

        ``mask_mod`` is evaluated once per (query, key) pair on the device of the tensors it captures (the CPU
        without any), in chunks of at most ``BlockSparse`` ``CHUNK_ELEMENTS`` elements; once per head as well only
        when its result depends on ``h``. Without a ``mask_mod`` every in-range block is full. The result is cached
        (:data:`BLOCK_MASK_CACHE` entries) by :meth:`fingerprint` and the shape: the same variant (code, parameters,
        captured tensors unmodified) and lengths are evaluated once."""
        from ..layout.block_sparse import _check_block

        R, C = _check_block(block)
        qo = [int(x) for x in (qo_lens.tolist() if hasattr(qo_lens, "tolist") else qo_lens)]
        kv = [int(x) for x in (kv_lens.tolist() if hasattr(kv_lens, "tolist") else kv_lens)]
        if len(qo) != len(kv):
            raise InputError(f"qo_lens has {len(qo)} requests but kv_lens has {len(kv)}")
        # cached by what the mask depends on (a notebook re-running a cell does not evaluate a 32k x 32k mask again)
        key = (self.fingerprint(), tuple(qo), tuple(kv), int(num_qo_heads), (R, C))
        if key in _BLOCK_MASKS:
            _BLOCK_MASKS[key] = _BLOCK_MASKS.pop(key)           # most recently used last
            return list(_BLOCK_MASKS[key])
        out = self._evaluate_block_masks(qo, kv, int(num_qo_heads), R, C)
        _BLOCK_MASKS[key] = tuple(out)
        while len(_BLOCK_MASKS) > BLOCK_MASK_CACHE:
            _BLOCK_MASKS.pop(next(iter(_BLOCK_MASKS)))
        return out

    def _evaluate_block_masks(self, qo: list, kv: list, num_qo_heads: int, R: int, C: int) -> list:
        from ..layout import BlockSparse

        _, m = self.bound_mods()
        if m is None:
            m = lambda bb, hh, q, k: torch.ones_like(q + k, dtype=torch.bool)  # noqa: E731
        caps = self.generated.captures
        dev = caps[0][0].device if caps else torch.device("cpu")
        return [BlockSparse.from_mask_mod(m, M, N, (R, C), b=b, heads=num_qo_heads, device=dev)
                for b, (M, N) in enumerate(zip(qo, kv))]

    def fingerprint(self) -> str:
        """What the kernels' masking depends on: the traced code, the parameter values and the *contents* of the
        tensors the mods capture now (not their addresses: a freed tensor's memory is reused by the next one). A
        plan made from :meth:`block_masks` records it; a runner checks it."""
        h = hashlib.sha256(self.cuda.encode())
        h.update(repr(sorted(self.params.items())).encode())
        for t, origin in self._traced_now().captures:
            h.update(repr((origin, tuple(t.shape), str(t.dtype))).encode())
            h.update(t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ the kernel side
    @functools.cached_property
    def generated(self) -> Generated:
        """The traced CUDA struct (see ``kernels/include/infernb/variant.cuh``)."""
        return generate(self.cuda_name, self.score_mod, self.mask_mod, self.params, set(self.runtime), self.softmax,
                        self.cuda_score_mod, self.cuda_mask_mod)

    @property
    def positional(self) -> bool:
        """Whether the hooks read the request or a position (``b``, ``q_idx``, ``kv_idx``; raw CUDA hooks count as
        reading all): such a variant needs each logit's true request and positions, so it cannot run where keys
        are computed away from their sequence (a cascade's shared levels). ``h`` alone is not positional."""
        return bool(self.generated.indices & {"b", "q_idx", "kv_idx"})

    @property
    def cuda_name(self) -> str:
        return "variant_" + c_identifier(self.name)

    @property
    def cuda(self) -> str:
        """Generated CUDA source of the variant struct."""
        return self.generated.code

    @property
    def code_hash(self) -> str:
        """Hash of the generated code (compile-time constants included; runtime parameters excluded)."""
        return hashlib.sha256(self.cuda.encode()).hexdigest()[:10]

    def check_device(self, device) -> None:
        """Every captured tensor must live where the kernel runs."""
        self._check_captures(self.generated.captures, device)

    def _check_captures(self, captures, device) -> None:
        device = torch.device(device)
        for t, origin in captures:
            if t.device.type != device.type or (device.index is not None and t.device.index not in (None, device.index)):
                raise InputError(f"variant {self.name}: a tensor captured at {origin} is on {t.device}, but the "
                                 f"kernel runs on {device}; move it there (e.g. .to('{device}')) before defining "
                                 "the variant")

    def pack(self, device=None) -> tuple[bytes, list[torch.Tensor]]:
        """``params_t`` packed as the generated struct lays it out (pointers of captured tensors, strides,
        runtime scalars), and the tensors those pointers point into. Rebuilt on every call: new runtime values
        never need a recompile.

        The mods are traced again first, so the kernel reads the tensors the Python functions capture *now*
        (the reference always does): a notebook that re-binds ``bias = ...`` gets the new tensor in both. If
        the re-traced code differs from the compiled one (another shape, dtype or expression), this raises.
        With ``device``, every tensor packed must live there. Keep the returned tensors alive for as long as a
        kernel may read the bytes (a re-bound global alone would not).
        """
        fresh = self._traced_now()
        if device is not None:
            self._check_captures(fresh.captures, device)
        vals, fmt = [], "="
        for f in fresh.fields:
            fmt += f.fmt
            if isinstance(f.source, str):
                vals.append(float(self.params[f.source]) if f.fmt == "f" else int(self.params[f.source]))
            else:
                t, d = f.source
                vals.append(t.data_ptr() if d is None else t.stride(d))
        raw = struct.pack(fmt, *vals) if fresh.fields else b"\0" * 4
        return raw + b"\0" * (fresh.params_size - len(raw)), [t for t, _ in fresh.captures]

    def _traced_now(self) -> Generated:
        """The mods traced again (the tensors they capture now); raises if that changes the generated code."""
        try:
            fresh = generate(self.cuda_name, self.score_mod, self.mask_mod, self.params, set(self.runtime),
                             self.softmax, self.cuda_score_mod, self.cuda_mask_mod)
        except TraceError as e:
            raise InputError(f"variant {self.name}: its Python now traces to different code than when it was "
                             f"defined ({e}); define the variant again") from e
        if fresh.code != self.generated.code:
            raise InputError(f"variant {self.name}: its Python now traces to different code than when it was "
                             "defined (a captured tensor re-bound with another shape or dtype, or a changed "
                             "function); define the variant again")
        return fresh

    def params_bytes(self) -> bytes:
        """The packed ``params_t`` alone (see :meth:`pack`, which also returns the tensors to keep alive)."""
        return self.pack()[0]

    def __repr__(self) -> str:
        rt = f", runtime={sorted(self.runtime)}" if self.runtime else ""
        return (f"Variant({self.name!r}, score_mod={'yes' if self.score_mod or self.cuda_score_mod else 'no'}, "
                f"mask_mod={'yes' if self.mask_mod or self.cuda_mask_mod else 'no'}, params={self.params}{rt}"
                f"{', sigmoid' if not self.softmax else ''})")



__all__ = ["TraceError", "Variant"]
