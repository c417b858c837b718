"""Traced expression graphs -> the CUDA variant struct of ``kernels/include/infernb/variant.cuh``."""
from __future__ import annotations

import dataclasses
import math
import re
import struct

import numpy as np
import torch

from .trace import APPROX_OPS, Sym, TraceError, user_line_of

CTYPE = {"float": "float", "int": "long long", "bool": "bool"}     # integers in 64 bits, like torch
#: unary ops with one fixed CUDA spelling ({} = the operand)
UNARY = {"neg": "(-{})", "not": "(!{})", "bitnot": "(~{})", "sign": "infernb::vx::sgn({})",
         "round_bf16": "infernb::vx::round_bf16({})", "sigmoid": "infernb::vx::sigmoid((float)({}))",
         "tanh_approx": "infernb::vx::tanh_approx((float)({}))"}
#: float math functions: `op` -> `opf` from the CUDA math library
FLOAT_FUNCS = ("tanh", "exp", "exp2", "log", "log2", "log1p", "sqrt", "rsqrt", "sin", "cos", "erf", "floor", "ceil")
TENSOR_CTYPE = {torch.float32: "float", torch.int32: "int", torch.int64: "long long", torch.bool: "bool"}


@dataclasses.dataclass
class Field:
    """One member of ``params_t``: a runtime scalar, a captured tensor's pointer, or one of its strides."""

    name: str
    ctype: str
    fmt: str                 # struct-module format ('Q' pointer, 'q' stride, 'f' float, 'i' int/bool)
    source: object           # param name (str) or (tensor, None) / (tensor, dim)


@dataclasses.dataclass
class Generated:
    code: str
    fields: list[Field]
    captures: list[tuple[torch.Tensor, str]]          # (tensor, where it was captured)
    origins: dict[int, str]                           # line of `code` (1-based) -> Python origin
    approx: dict[str, float] = dataclasses.field(default_factory=dict)   # approximate ops used -> max rel. error
    key_gathers: bool = False     # a captured tensor is read at an index that depends on kv_idx (a read per logit)
    lib_calls: int = 0            # accurate math-library calls emitted (tanhf, expf, powf, fmod, sigmoid's expf, ...:
                                  # ~20 instructions each)
    indices: frozenset = frozenset({"b", "h", "q_idx", "kv_idx"})   # index arguments the hooks read (raw CUDA: all)

    @property
    def params_size(self) -> int:
        """``sizeof(params_t)``: 8-byte members come first, so only the tail is padded."""
        if not self.fields:
            return 4                                       # `int unused_;`
        raw = struct.calcsize("=" + "".join(f.fmt for f in self.fields))
        align = 8 if any(f.fmt in "Qq" for f in self.fields) else 4
        return -(-raw // align) * align


class _Emitter:
    def __init__(self):
        self.lines: list[tuple[str, str | None]] = []
        self.memo: dict[int, str] = {}
        self.n = 0
        self.tensors: dict[int, tuple[str, torch.Tensor, str]] = {}
        self.params: dict[str, str] = {}
        self.approx: dict[str, float] = {}
        self.key_gathers = False
        self.lib_calls = 0
        self.indices: set[str] = set()
        self._on_key: dict[int, bool] = {}

    def expr(self, x: Sym) -> str:
        if id(x) in self.memo:
            return self.memo[id(x)]
        op, a = x.op, x.args
        if op == "const":
            s = _literal(a[0], x.kind)
        elif op == "arg":
            s = a[0]
            if s != "score":
                self.indices.add(s)
        elif op == "param":
            self.params[a[0]] = x.kind
            s = f"p.{a[0]}"
        else:
            name = f"v{self.n}"
            self.n += 1
            self.lines.append((f"const {CTYPE[x.kind]} {name} = {self._compute(x)};", x.origin))
            s = name
        self.memo[id(x)] = s
        return s

    def on_key(self, x) -> bool:
        """Whether ``x`` depends on the key index ``kv_idx``."""
        if not isinstance(x, Sym):
            return False
        if id(x) not in self._on_key:
            # (a load's first argument is its tensor, not a Sym: its indices decide)
            self._on_key[id(x)] = (x.op == "arg" and x.args[0] == "kv_idx") or any(self.on_key(y) for y in x.args)
        return self._on_key[id(x)]

    def _compute(self, x: Sym) -> str:
        op, a = x.op, x.args
        if op == "load":
            t = a[0]
            self.key_gathers |= any(self.on_key(i) for i in a[1:])
            if t.dtype not in TENSOR_CTYPE:
                raise TraceError(f"captured tensor of dtype {t.dtype} (at {x.origin}) is not supported; use float32, "
                                 "int32, int64 or bool")
            if id(t) not in self.tensors:
                self.tensors[id(t)] = (f"t{len(self.tensors)}", t, x.origin)
            name = self.tensors[id(t)][0]
            parts = []
            for d, i in enumerate(a[1:]):
                e = self.expr(i)
                if i.op != "const":                       # negative indices count from the end, as in torch
                    e = f"({e} < 0 ? {e} + {int(t.shape[d])}LL : {e})"
                parts.append(f"(long long)({e}) * p.{name}_s{d}")
            offs = " + ".join(parts)
            val = f"p.{name}[{offs or 0}]"
            return f"({CTYPE[x.kind]})({val})"
        args = [self.expr(y) if isinstance(y, Sym) else y for y in a]
        kinds = [y.kind if isinstance(y, Sym) else None for y in a]
        f = x.kind == "float"
        if op in ("add", "sub", "mul"):
            return f"({args[0]} {'+-*'[('add', 'sub', 'mul').index(op)]} {args[1]})"
        if op == "div":
            return f"((float)({args[0]}) / (float)({args[1]}))"
        if op == "floordiv":
            return f"infernb::vx::floordivf({args[0]}, {args[1]})" if f else f"infernb::vx::floordiv({args[0]}, {args[1]})"
        if op == "truncdiv":
            return f"truncf((float)({args[0]}) / (float)({args[1]}))" if f else f"({args[0]} / {args[1]})"
        if op == "mod":
            self.lib_calls += f
            return f"infernb::vx::pymodf({args[0]}, {args[1]})" if f else f"infernb::vx::pymod({args[0]}, {args[1]})"
        if op == "pow":
            self.lib_calls += f
            return f"powf((float)({args[0]}), (float)({args[1]}))" if f else f"infernb::vx::ipow({args[0]}, {args[1]})"
        if op in ("lt", "le", "gt", "ge", "eq", "ne"):
            sym = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}[op]
            return f"({args[0]} {sym} {args[1]})"
        if op in ("and", "or", "xor"):
            if x.kind == "bool":
                return f"({args[0]} {'&&' if op == 'and' else '||' if op == 'or' else '!='} {args[1]})"
            return f"({args[0]} {'&' if op == 'and' else '|' if op == 'or' else '^'} {args[1]})"
        if op in ("min", "max"):
            if f:
                return f"infernb::vx::f{op}n((float)({args[0]}), (float)({args[1]}))"
            return f"infernb::vx::i{op}({args[0]}, {args[1]})"
        if op == "where":
            t = CTYPE[x.kind]
            return f"({args[0]} ? ({t})({args[1]}) : ({t})({args[2]}))"
        if op.startswith("cast_"):
            return f"(({args[0]}) != 0)" if x.kind == "bool" else f"({CTYPE[x.kind]})({args[0]})"
        if op == "abs":
            return f"fabsf({args[0]})" if kinds[0] == "float" else f"({args[0]} < 0 ? -{args[0]} : {args[0]})"
        if op == "narrow":
            return f"(long long)({a[1]})({args[0]})"
        if op in APPROX_OPS:
            self.approx[op] = APPROX_OPS[op]
        if op == "sigmoid":
            self.lib_calls += 1
        if op in UNARY:
            return UNARY[op].format(args[0])
        if op in FLOAT_FUNCS:
            self.lib_calls += op not in ("floor", "ceil", "sqrt", "rsqrt")
            return f"{op}f((float)({args[0]}))"
        raise TraceError(f"internal: no CUDA for traced op {op!r}")


def _literal(v, kind: str) -> str:
    if kind == "bool":
        return "true" if v else "false"
    if kind == "int":
        if not -2**63 <= int(v) < 2**63:
            raise TraceError(f"integer constant {v} does not fit in 64 bits")
        return f"{int(v)}LL"
    v = float(v)
    if math.isnan(v):
        return "infernb::vx::nanf_()"
    if math.isinf(v):
        return "INFERNB_INF" if v > 0 else "(-INFERNB_INF)"
    with np.errstate(over="ignore"):
        f32 = float(np.float32(v))
    if math.isinf(f32):
        raise TraceError(f"the constant {v!r} overflows float32, the precision traced mods compute in")
    return f"{f32!r}f"


def trace_fn(fn, arg_names: list[str], arg_kinds: list[str], extra: dict):
    """Call ``fn`` with Syms for its standard arguments and ``extra`` keyword values (Syms for runtime params)."""
    args = [Sym("arg", (n,), k, origin="") for n, k in zip(arg_names, arg_kinds)]
    try:
        return fn(*args, **extra)
    except TraceError:
        raise
    except Exception as e:             # torch or Python refusing a traced value: name the user's line anyway
        raise TraceError(f"{type(e).__name__} while tracing {getattr(fn, '__name__', 'the mod')} at "
                         f"{user_line_of(e.__traceback__)}: {e}. Traced mods take Python scalars, traced values, "
                         "the operators and the torch functions of infernb.variants.trace.TORCH_FUNCS, and captured "
                         "tensors indexed with traced values; for anything else write the hook in CUDA "
                         "(Variant(cuda_score_mod=..., cuda_mask_mod=...))") from e



def generate(cname: str, score_mod, mask_mod, params: dict, runtime: set, softmax: bool,
             cuda_score_mod: str | None = None, cuda_mask_mod: str | None = None) -> Generated:
    """Trace the mods and emit the variant struct ``cname``."""
    em = _Emitter()

    def kw_for(fn):
        import inspect

        names = list(inspect.signature(fn).parameters)[5 if fn is score_mod else 4:]
        out = {}
        for n in names:
            if n not in params:
                raise TraceError(f"{fn.__name__} takes a parameter `{n}` that the variant's params do not define "
                                 f"(params: {sorted(params)})")
            v = params[n]
            out[n] = Sym("param", (n,), "bool" if isinstance(v, bool) else "int" if isinstance(v, int) else "float",
                         origin=f"runtime parameter {n}") if n in runtime else v
        return out

    body = {}
    for kind, fn, cuda, names, kinds, ret in (
            ("score", score_mod, cuda_score_mod, ["score", "b", "h", "q_idx", "kv_idx"],
             ["float", "int", "int", "int", "int"], "float"),
            ("mask", mask_mod, cuda_mask_mod, ["b", "h", "q_idx", "kv_idx"], ["int"] * 4, "bool")):
        start = len(em.lines)
        if cuda is not None:
            em.lines.append((cuda.strip(), "raw CUDA supplied by the variant"))
            em.indices |= {"b", "h", "q_idx", "kv_idx"}                 # (not traced: assume it reads them all)
        elif fn is None:
            em.lines.append(("return score;" if kind == "score" else "return true;", None))
        else:
            out = trace_fn(fn, names, kinds, kw_for(fn))
            if not isinstance(out, Sym):
                out = Sym("const", (out.item() if isinstance(out, torch.Tensor) else out,),
                          "bool" if kind == "mask" else "float", origin="")
            if kind == "mask" and out.kind != "bool":
                raise TraceError(f"mask_mod must return a boolean (a comparison, &, |, ~), got a {out.kind} value "
                                 f"(last operation at {out.origin})")
            e = em.expr(out)
            em.lines.append((f"return ({ret})({e});", out.origin))
        body[kind] = em.lines[start:]
    # params_t: 8-byte members first, then 4-byte, so the layout has no padding to guess
    fields: list[Field] = []
    captures = []
    for name, t, origin in em.tensors.values():
        fields.append(Field(name, f"const {TENSOR_CTYPE[t.dtype]}*", "Q", (t, None)))
        for d in range(t.dim()):
            fields.append(Field(f"{name}_s{d}", "long long", "q", (t, d)))
        captures.append((t, origin))
    for n, kind in sorted(em.params.items()):
        fields.append(Field(n, {"bool": "int", "int": "long long", "float": "float"}[kind],
                            {"bool": "i", "int": "q", "float": "f"}[kind], n))
    fields.sort(key=lambda f: f.fmt not in "Qq")            # 8-byte members first: no padding to guess
    lines = [f"// variant {cname}: generated by infernb.variants from Python (interface: infernb/variant.cuh)",
             f"struct {cname} {{",
             f"  static constexpr bool USE_SOFTMAX = {'true' if softmax else 'false'};",
             "  struct params_t {"]
    lines += [f"    {f.ctype} {f.name};" for f in fields] or ["    int unused_;"]
    lines.append("  };")
    origins: dict[int, str] = {}

    def fn_block(sig, stmts):
        lines.append(f"  __device__ __forceinline__ static {sig} {{")
        for stmt, origin in stmts:
            for j, part in enumerate(stmt.splitlines()):
                lines.append("    " + part)
                if origin and j == 0:
                    origins[len(lines)] = origin
        lines.append("  }")

    fn_block("float score_mod(const params_t& p, float score, int b, int h, int q_idx, int kv_idx)", body["score"])
    fn_block("bool mask_mod(const params_t& p, int b, int h, int q_idx, int kv_idx)", body["mask"])
    lines.append("};")
    g = Generated("", fields, captures, origins, dict(em.approx), em.key_gathers, em.lib_calls, frozenset(em.indices))
    lines.append(f"static_assert(sizeof({cname}::params_t) == {g.params_size}, "
                 f"\"params_t layout differs from infernb's packing\");")
    # annotate generated lines with their Python origin for readers
    out = []
    for i, line in enumerate(lines, start=1):
        o = origins.get(i)
        out.append(f"{line}  // {o}" if o and "\n" not in o else line)
    g.code = "\n".join(out) + "\n"
    return g


def c_identifier(name: str) -> str:
    s = re.sub(r"[^0-9a-zA-Z_]", "_", name)
    return ("v_" + s) if s[:1].isdigit() else s
