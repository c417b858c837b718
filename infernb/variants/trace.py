"""Symbolic tracing of FlexAttention-style ``score_mod`` / ``mask_mod`` functions (no torch.compile).

The function is called once with :class:`Sym` proxies for ``score, b, h, q_idx, kv_idx`` (and runtime
parameters). Python operators and the torch functions in :data:`TORCH_FUNCS` (intercepted through
``__torch_function__``, including indexing a captured tensor with traced indices) build an expression graph;
:mod:`infernb.variants.codegen` turns it into CUDA. What cannot be traced fails at once, naming the construct
and the user's line: a data-dependent ``if`` / ``and`` / ``or`` / ``int()``, an unsupported torch function.
"""
from __future__ import annotations

import linecache
import os
import sys

import torch

from ..errors import InfernbError

_HERE = os.path.dirname(os.path.abspath(__file__))
_SKIP_FILES = {os.path.join(_HERE, f) for f in ("trace.py", "codegen.py", "variant.py")}
_STDLIB = os.path.dirname(os.path.abspath(os.__file__))


class TraceError(InfernbError, TypeError):
    """A score_mod / mask_mod uses Python that cannot be turned into CUDA."""


def _is_user_code(filename: str) -> bool:
    """Code of the variant's author: not the tracer, torch or the standard library."""
    fn = os.path.abspath(filename)
    return fn not in _SKIP_FILES and f"{os.sep}torch{os.sep}" not in fn and not fn.startswith(_STDLIB + os.sep)


def _where(filename: str, lineno: int) -> str:
    src = linecache.getline(filename, lineno).strip()
    return f"{os.path.basename(filename)}:{lineno}  {src}".rstrip()


def user_line() -> str:
    """``file:line  source`` of the innermost frame that is the variant's own code (not the tracer, torch or
    the standard library): the line of the score_mod / mask_mod that did the operation."""
    f = sys._getframe(1)
    while f is not None:
        if _is_user_code(f.f_code.co_filename):
            return _where(f.f_code.co_filename, f.f_lineno)
        f = f.f_back
    return "<unknown>"


def user_line_of(tb) -> str:
    """:func:`user_line` of an exception's traceback: its innermost frame that is the variant's own code."""
    found = "<unknown>"
    while tb is not None:
        if _is_user_code(tb.tb_frame.f_code.co_filename):
            found = _where(tb.tb_frame.f_code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


class Sym:
    """A traced value: ``op`` with ``args`` (Syms or Python constants), of kind ``float``, ``int`` or ``bool``."""

    __slots__ = ("op", "args", "kind", "origin")

    def __init__(self, op: str, args: tuple, kind: str, origin: str | None = None):
        self.op, self.args, self.kind = op, args, kind
        self.origin = origin if origin is not None else user_line()

    # ---------------------------------------------------------------- untraceable Python
    def __bool__(self):
        raise TraceError(f"data-dependent Python control flow on a traced value at {user_line()}: `if`, `and`, "
                         "`or`, `not` and chained comparisons need a Python bool. Write "
                         "torch.where(cond, a, b) instead of if/else, and `&`, `|`, `~` instead of and/or/not.")

    def __int__(self):
        raise TraceError(f"int() of a traced value at {user_line()}: use x.to(torch.int32) / x.long() instead")

    def __float__(self):
        raise TraceError(f"a traced value was turned into a Python float at {user_line()} (float(), or a math.* "
                         "function, which needs one): use the torch function on the traced value instead "
                         "(torch.exp, torch.log, torch.tanh, ...), or x.float() to convert")

    __index__ = __int__

    def _no(what: str, fix: str):
        def f(self, *a):
            raise TraceError(f"{what} of a traced value at {user_line()} is not traceable: {fix}")
        return f

    __round__ = _no("round()", "write torch.floor(x + 0.5) (rounding half up)")
    __floor__ = _no("math.floor()", "use torch.floor(x)")
    __ceil__ = _no("math.ceil()", "use torch.ceil(x)")
    __trunc__ = _no("math.trunc()", "use torch.div(x, 1, rounding_mode='trunc') or x.long()")
    __divmod__ = __rdivmod__ = _no("divmod()", "write x // y and x % y")
    __lshift__ = __rlshift__ = _no("<<", "multiply by a power of two (x * 2**n)")
    __rshift__ = __rrshift__ = _no(">>", "floor-divide by a power of two (x // 2**n)")
    __matmul__ = __rmatmul__ = _no("@", "traced values are scalars")
    __complex__ = _no("complex()", "traced mods compute in float32 / int64 / bool")
    __getitem__ = _no("indexing", "traced values are scalars; index a captured tensor with them instead")
    del _no

    def __len__(self):
        raise TraceError(f"len() of a traced value at {user_line()}: traced values are scalars")

    def __iter__(self):
        raise TraceError(f"iterating over a traced value at {user_line()}: traced values are scalars")

    def __repr__(self):
        return f"Sym({self.op}, kind={self.kind})"

    # ---------------------------------------------------------------- operators
    def __add__(self, o): return binary("add", self, o)
    def __radd__(self, o): return binary("add", o, self)
    def __sub__(self, o): return binary("sub", self, o)
    def __rsub__(self, o): return binary("sub", o, self)
    def __mul__(self, o): return binary("mul", self, o)
    def __rmul__(self, o): return binary("mul", o, self)
    def __truediv__(self, o): return binary("div", self, o)
    def __rtruediv__(self, o): return binary("div", o, self)
    def __floordiv__(self, o): return binary("floordiv", self, o)
    def __rfloordiv__(self, o): return binary("floordiv", o, self)
    def __mod__(self, o): return binary("mod", self, o)
    def __rmod__(self, o): return binary("mod", o, self)
    def __pow__(self, o): return binary("pow", self, o)
    def __rpow__(self, o): return binary("pow", o, self)
    def __lt__(self, o): return binary("lt", self, o)
    def __le__(self, o): return binary("le", self, o)
    def __gt__(self, o): return binary("gt", self, o)
    def __ge__(self, o): return binary("ge", self, o)
    def __eq__(self, o): return binary("eq", self, o)   # noqa: PLE0307
    def __ne__(self, o): return binary("ne", self, o)
    def __and__(self, o): return binary("and", self, o)
    def __rand__(self, o): return binary("and", o, self)
    def __or__(self, o): return binary("or", self, o)
    def __ror__(self, o): return binary("or", o, self)
    def __xor__(self, o): return binary("xor", self, o)
    def __rxor__(self, o): return binary("xor", o, self)
    def __neg__(self): return unary("neg", self)
    def __pos__(self): return self
    def __abs__(self): return unary("abs", self)
    def __invert__(self):
        if self.kind == "float":
            raise TraceError(f"~ of a float value at {user_line()}: torch does not define it either")
        return unary("not" if self.kind == "bool" else "bitnot", self)
    __hash__ = object.__hash__

    # ---------------------------------------------------------------- tensor-like methods
    def float(self): return cast(self, "float")
    def int(self): return cast(self, "int")
    def long(self): return cast(self, "int")
    def bool(self): return cast(self, "bool")

    def to(self, dtype=None, *args, **kwargs):
        if isinstance(dtype, torch.dtype):
            return cast_dtype(self, dtype)
        return self

    def __getattr__(self, name):
        if name in METHOD_FUNCS:
            return lambda *a, **k: METHOD_FUNCS[name](self, *a, **k)
        raise TraceError(f"traced values have no attribute .{name} (at {user_line()}); supported methods: "
                         f"{', '.join(sorted(METHOD_FUNCS))}, float(), int(), long(), bool(), to(dtype)")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name == "__getitem__":
            return index(args[0], args[1])
        handler = TORCH_FUNCS.get(name)
        if handler is None:
            raise TraceError(f"torch.{name} is not supported in a traced score_mod/mask_mod (at {user_line()}). "
                             f"Supported: {', '.join(sorted(k for k in TORCH_FUNCS if not k.startswith('__')))}. For anything else write the hook in "
                             "CUDA with Variant(cuda_score_mod=..., cuda_mask_mod=...).")
        return handler(*args, **kwargs)


def const_kind(x) -> str:
    if isinstance(x, bool):
        return "bool"
    if isinstance(x, int):
        return "int"
    if isinstance(x, float):
        return "float"
    if isinstance(x, torch.Tensor) and x.dim() == 0:
        return "bool" if x.dtype == torch.bool else "float" if x.is_floating_point() else "int"
    raise TraceError(f"unsupported value {x!r} ({type(x).__name__}) in a traced expression at {user_line()}: "
                     "use Python scalars, traced values, or index a captured tensor with traced indices")


def _lift(x):
    if isinstance(x, Sym):
        return x
    if isinstance(x, torch.Tensor):
        if x.dim() != 0:
            raise TraceError(f"a captured tensor of shape {list(x.shape)} is used whole at {user_line()}; index "
                             "it with traced values (e.g. slopes[h], bias[h, bucket])")
        return index(x, ())              # a captured 0-d tensor is read at run time, not baked in
    return Sym("const", (x,), const_kind(x))


def _num_kind(*xs) -> str:
    return "float" if any(x.kind == "float" for x in xs) else "int"


def binary(op: str, a, b) -> Sym:
    a, b = _lift(a), _lift(b)
    if a.kind == b.kind == "bool" and op in ("add", "mul", "sub"):
        if op == "sub":
            raise TraceError(f"subtracting booleans at {user_line()}: torch does not allow it; use ^ or ~")
        return Sym("or" if op == "add" else "and", (a, b), "bool")   # torch keeps bool + bool boolean
    if op in ("lt", "le", "gt", "ge", "eq", "ne"):
        return Sym(op, (a, b), "bool")
    if op in ("and", "or", "xor"):
        return Sym(op, (a, b), "bool" if a.kind == b.kind == "bool" else "int")
    if op == "div":
        return Sym(op, (a, b), "float")
    if op == "pow":
        return Sym(op, (a, b), "float" if _num_kind(a, b) == "float" or _is_neg_const(b) else "int")
    return Sym(op, (a, b), _num_kind(a, b))


def _is_neg_const(x: Sym) -> bool:
    return x.op == "const" and x.args[0] < 0


def unary(op: str, a) -> Sym:
    a = _lift(a)
    if op == "neg" and a.kind == "bool":
        raise TraceError(f"negating a boolean at {user_line()}: torch does not allow it; use ~")
    if op in ("not",):
        return Sym(op, (a,), "bool")
    if op in ("neg", "abs", "bitnot", "sign"):
        return Sym(op, (a,), a.kind if op != "sign" else a.kind)
    return Sym(op, (a,), "float")                      # transcendental functions compute in float


def cast(a, kind: str) -> Sym:
    return Sym(f"cast_{kind}", (_lift(a),), kind)


_NARROW_INTS = {torch.uint8: "unsigned char", torch.int8: "signed char", torch.int16: "short", torch.int32: "int"}


def cast_dtype(a, dtype: torch.dtype) -> Sym:
    """``x.to(dtype)``: kinds follow the dtype; narrower types round (bf16) or wrap (8/16/32-bit ints) like torch."""
    a = _lift(a)
    if dtype == torch.bool:
        return cast(a, "bool")
    if dtype in (torch.float32, torch.float64):
        return cast(a, "float")
    if dtype == torch.bfloat16:
        return Sym("round_bf16", (cast(a, "float"),), "float")
    if dtype in _NARROW_INTS:
        return Sym("narrow", (cast(a, "int"), _NARROW_INTS[dtype]), "int")
    if dtype == torch.int64:
        return cast(a, "int")
    raise TraceError(f"casting to {dtype} inside a traced mod is not supported (at {user_line()}); "
                     "use float32, bfloat16, bool or an integer type")


def where(c, a, b) -> Sym:
    c, a, b = _lift(c), _lift(a), _lift(b)
    kind = "bool" if a.kind == b.kind == "bool" else _num_kind(a, b)
    return Sym("where", (c, a, b), kind)


def _tensor_other(name: str, b) -> None:
    """torch's elementwise max / min take a tensor as ``other``; ``torch.max(x, 0)`` is a reduction over dim 0 (a
    different function, returning values and indices): refuse what torch would not compute elementwise."""
    if not isinstance(b, (Sym, torch.Tensor)):
        raise TraceError(f"torch.{name}(x, {b!r}) at {user_line()}: in torch a Python number there is "
                         f"{'a dimension to reduce over' if name in ('max', 'min') else 'not accepted'}, not an "
                         f"elementwise bound; use torch.clamp(x, {'min' if name in ('max', 'maximum') else 'max'}="
                         f"{b!r}) or torch.{'maximum' if name in ('max', 'maximum') else 'minimum'}(x, other_tensor)")


def minimum(a, b, _name="minimum") -> Sym:
    _tensor_other(_name, b)
    a, b = _lift(a), _lift(b)
    return Sym("min", (a, b), _num_kind(a, b))


def maximum(a, b, _name="maximum") -> Sym:
    _tensor_other(_name, b)
    a, b = _lift(a), _lift(b)
    return Sym("max", (a, b), _num_kind(a, b))


def _reduce_or_elementwise(name: str):
    def f(a, b=None, *rest, **kw):
        if b is None or rest or kw:
            raise TraceError(f"torch.{name} with {'no second argument' if b is None else 'dim / keepdim'} at "
                             f"{user_line()} is a reduction; traced mods are elementwise: use torch.{name}imum"
                             "(x, other) or torch.clamp")
        return (maximum if name == "max" else minimum)(a, b, _name=name)
    return f


def clamp(x, min=None, max=None) -> Sym:  # noqa: A002
    x = _lift(x)                                   # (torch.clamp takes numbers or tensors as bounds)
    for op, bound in (("max", min), ("min", max)):
        if bound is not None:
            bound = _lift(bound)
            x = Sym(op, (x, bound), _num_kind(x, bound))
    return x


def index(tensor, idx) -> Sym:
    """``captured_tensor[i, j, ...]`` with traced or constant indices (negative ones count from the end, as in
    torch; constant ones are checked against the shape here)."""
    if not isinstance(tensor, torch.Tensor):
        raise TraceError(f"only captured torch tensors can be indexed with traced values (at {user_line()})")
    idx = idx if isinstance(idx, tuple) else (idx,)
    fixed = []
    for d, i in enumerate(idx):
        if isinstance(i, int) and not isinstance(i, bool) and d < tensor.dim():
            n = tensor.shape[d]
            if not -n <= i < n:
                raise TraceError(f"index {i} is out of range for dimension {d} (size {n}) at {user_line()}")
            i = i + n if i < 0 else i
        fixed.append(i)
    idx = tuple(fixed)
    if len(idx) != tensor.dim():
        raise TraceError(f"a captured tensor of shape {list(tensor.shape)} is indexed with {len(idx)} indices at "
                         f"{user_line()}: give one index per dimension (slices are not supported)")
    for i in idx:
        if isinstance(i, slice) or i is None or i is Ellipsis:
            raise TraceError(f"slicing a captured tensor is not supported at {user_line()}: index every dimension")
    lifted = tuple(_lift(i) for i in idx)
    for i in lifted:
        if i.kind == "float":
            raise TraceError(f"a captured tensor is indexed with a float at {user_line()}: convert with .long()")
    kind = "bool" if tensor.dtype == torch.bool else "float" if tensor.is_floating_point() else "int"
    return Sym("load", (tensor, *lifted), kind)


def _div(a, b, rounding_mode):
    if rounding_mode is None:
        return binary("div", a, b)
    if rounding_mode == "floor":
        return binary("floordiv", a, b)
    if rounding_mode == "trunc":
        return binary("truncdiv", a, b)
    raise TraceError(f"torch.div(rounding_mode={rounding_mode!r}) at {user_line()}: expected None, 'floor' or 'trunc'")


def _f(op):
    return lambda x, *a, **k: unary(op, x)


TORCH_FUNCS = {
    "where": where, "minimum": minimum, "maximum": maximum, "min": _reduce_or_elementwise("min"),
    "max": _reduce_or_elementwise("max"), "clamp": clamp,
    "clip": clamp, "tanh": _f("tanh"), "exp": _f("exp"), "exp2": _f("exp2"), "log": _f("log"), "log2": _f("log2"),
    "log1p": _f("log1p"), "sqrt": _f("sqrt"), "rsqrt": _f("rsqrt"), "sigmoid": _f("sigmoid"), "sin": _f("sin"),
    "cos": _f("cos"), "erf": _f("erf"), "floor": _f("floor"), "ceil": _f("ceil"), "abs": lambda x: unary("abs", x),
    "sign": lambda x: unary("sign", x), "logical_and": lambda a, b: binary("and", cast(a, "bool"), cast(b, "bool")),
    "logical_or": lambda a, b: binary("or", cast(a, "bool"), cast(b, "bool")),
    "logical_not": lambda a: unary("not", cast(a, "bool")),
    "add": lambda a, b, alpha=1: binary("add", a, binary("mul", b, alpha) if alpha != 1 else b),
    "sub": lambda a, b, alpha=1: binary("sub", a, binary("mul", b, alpha) if alpha != 1 else b),
    "mul": lambda a, b: binary("mul", a, b), "div": lambda a, b, rounding_mode=None: _div(a, b, rounding_mode),
    "pow": lambda a, b: binary("pow", a, b), "remainder": lambda a, b: binary("mod", a, b),
    "__add__": lambda a, b: binary("add", a, b), "__radd__": lambda a, b: binary("add", b, a),
    "__sub__": lambda a, b: binary("sub", a, b), "__rsub__": lambda a, b: binary("sub", b, a),
    "__mul__": lambda a, b: binary("mul", a, b), "__rmul__": lambda a, b: binary("mul", b, a),
    "__truediv__": lambda a, b: binary("div", a, b), "__rtruediv__": lambda a, b: binary("div", b, a),
    "__lt__": lambda a, b: binary("lt", a, b), "__le__": lambda a, b: binary("le", a, b),
    "__gt__": lambda a, b: binary("gt", a, b), "__ge__": lambda a, b: binary("ge", a, b),
    "__eq__": lambda a, b: binary("eq", a, b), "__ne__": lambda a, b: binary("ne", a, b),
    "__and__": lambda a, b: binary("and", a, b), "__or__": lambda a, b: binary("or", a, b),
}
# torch.special's spellings of the same functions (their __torch_function__ names carry a prefix)
TORCH_FUNCS.update({"special_erf": TORCH_FUNCS["erf"], "special_expit": TORCH_FUNCS["sigmoid"],
                    "special_exp2": TORCH_FUNCS["exp2"], "special_log1p": TORCH_FUNCS["log1p"]})
METHOD_FUNCS = {k: TORCH_FUNCS[k] for k in ("tanh", "exp", "log", "sqrt", "sigmoid", "abs", "clamp", "clip", "floor",
                                             "ceil", "sign", "log1p", "exp2", "log2", "sin", "cos", "erf", "rsqrt")}


#: ops whose device code is a hardware approximation: op -> maximum relative error against the exact function
#: (the PTX ISA's bound). The Python side (evaluate, the reference, the emulator) computes the exact function.
APPROX_OPS = {"tanh_approx": 2.0 ** -10.987}


def approx_tanh(x):
    """``torch.tanh(x)`` computed on the GPU by the SFU's ``tanh.approx.f32`` (one instruction; relative error at most
    2^-10.987, :data:`APPROX_OPS`) instead of the ~25-instruction accurate ``tanhf``: what FlashInfer's soft-cap uses
    and FlexAttention's fast soft-cap recipe asks for. On tensors (the reference, the emulator, evaluate) it is the
    exact ``torch.tanh``; the GPU probe checks the device against that bound."""
    if isinstance(x, Sym):
        return unary("tanh_approx", x)
    return torch.tanh(x)

