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

    # ------------------------------------------------------------------ the kernel side
    @functools.cached_property
    def generated(self) -> Generated:
        """The traced CUDA struct (see ``kernels/include/infernb/variant.cuh``)."""
        return generate(self.cuda_name, self.score_mod, self.mask_mod, self.params, set(self.runtime), self.softmax,
                        self.cuda_score_mod, self.cuda_mask_mod)

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

    def params_bytes(self) -> bytes:
        """The packed ``params_t`` alone (see :meth:`pack`, which also returns the tensors to keep alive)."""
        return self.pack()[0]

    def __repr__(self) -> str:
        rt = f", runtime={sorted(self.runtime)}" if self.runtime else ""
        return (f"Variant({self.name!r}, score_mod={'yes' if self.score_mod or self.cuda_score_mod else 'no'}, "
                f"mask_mod={'yes' if self.mask_mod or self.cuda_mask_mod else 'no'}, params={self.params}{rt}"
                f"{', sigmoid' if not self.softmax else ''})")



__all__ = ["TraceError", "Variant"]
