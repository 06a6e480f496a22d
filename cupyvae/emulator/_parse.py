"""Find ``__global__`` kernels and ``extern __shared__`` arrays in preprocessed CUDA source.

The input is ``g++ -E -P`` output produced with the shim in parse mode, in which
``__global__``/``__shared__`` are left as plain identifiers, so macros in the
kernel source are already expanded but the CUDA keywords are still visible.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>(?:u8|u|U|L)?"(?:\\.|[^"\\\n])*")
  | (?P<chr>(?:u8|u|U|L)?'(?:\\.|[^'\\\n])*')
  | (?P<id>[A-Za-z_]\w*)
  | (?P<num>\.?\d(?:[eEpP][+-]|[\w.'])*)
  | (?P<punct>::|->|\.\.\.|\S)
    """,
    re.X,
)

# words that can appear in a parameter's type but are never its name
_TYPE_WORDS = frozenset(
    """void bool char short int long float double signed unsigned const volatile
    __restrict__ __restrict restrict struct class enum typename __half __nv_bfloat16
    float2 float3 float4 int2 int3 int4 uint2 uint3 uint4 double2 longlong2 ulonglong2
    size_t ptrdiff_t""".split()
)
_SKIP_WITH_PARENS = frozenset({"__launch_bounds__", "__attribute__", "__declspec", "alignas", "__align__"})


@dataclass
class Param:
    name: str | None
    decl: str  # the C++ type as written (without the name)


@dataclass
class KernelInfo:
    name: str
    qualname: str  # e.g. "::k" or "::ns::k"
    extern_c: bool
    params: list[Param] = field(default_factory=list)


@dataclass
class ParseResult:
    kernels: dict[str, KernelInfo]
    skipped: dict[str, str]  # name -> why it cannot be launched (templates, C++ linkage)
    shared_symbols: list[str]  # assembler symbols of every extern __shared__ array


def tokenize(text: str) -> list[str]:
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    out = []
    for m in _TOKEN.finditer(text):
        if m.lastgroup != "ws":
            out.append(m.group())
    return out


def _match(tokens: list[str], i: int, open_: str, close: str) -> int:
    """Index of the token closing the group opened at tokens[i]."""
    depth = 0
    for j in range(i, len(tokens)):
        t = tokens[j]
        if t == open_:
            depth += 1
        elif t == close:
            depth -= 1
            if depth == 0:
                return j
    return len(tokens) - 1


def _split_params(toks: list[str]) -> list[list[str]]:
    if not toks or toks == ["void"]:
        return []
    out, cur, depth = [], [], 0
    for t in toks:
        if t in "([{<":
            depth += 1
        elif t in ")]}>":
            depth -= 1
        if t == "," and depth == 0:
            out.append(cur)
            cur = []
        else:
            cur.append(t)
    out.append(cur)
    return out


def _type_text(toks: list[str]) -> str:
    s = " ".join(toks)
    s = re.sub(r"\s*\*\s*", "* ", s).replace("* *", "**").strip()
    s = re.sub(r"\s*&\s*", "& ", s).strip()
    return re.sub(r"\s+", " ", s)


def _param(toks: list[str]) -> Param:
    toks = list(toks)
    if "=" in toks:  # default argument
        toks = toks[: toks.index("=")]
    array = False
    while toks and toks[-1] == "]":
        j = len(toks) - 1
        while j > 0 and toks[j] != "[":
            j -= 1
        toks = toks[:j]
        array = True
    name = None
    if len(toks) >= 2 and re.fullmatch(r"[A-Za-z_]\w*", toks[-1]) and toks[-1] not in _TYPE_WORDS:
        name = toks[-1]
        toks = toks[:-1]
    decl = _type_text(toks) + ("*" if array else "")
    return Param(name, decl)


def _mangle(ns: list[str], name: str) -> str:
    return "_ZN" + "".join(f"{len(n)}{n}" for n in ns) + f"{len(name)}{name}E"


def parse(text: str) -> ParseResult:
    tokens = tokenize(text)
    n = len(tokens)
    stack: list[tuple[str, str]] = []  # ("ns", name) | ("C", "") | ("other", "")
    stmt_start = 0
    kernels: dict[str, KernelInfo] = {}
    skipped: dict[str, str] = {}
    shared: list[str] = []
    i = 0
    while i < n:
        t = tokens[i]
        if t == "{":
            if i >= 2 and tokens[i - 2] == "namespace" and re.fullmatch(r"[A-Za-z_]\w*", tokens[i - 1]):
                stack.append(("ns", tokens[i - 1]))
            elif i >= 1 and tokens[i - 1] == "namespace":
                stack.append(("ns", ""))
            elif i >= 2 and tokens[i - 2] == "extern" and tokens[i - 1] == '"C"':
                stack.append(("C", ""))
            else:
                stack.append(("other", ""))
            stmt_start = i + 1
        elif t == "}":
            if stack:
                stack.pop()
            stmt_start = i + 1
        elif t == ";":
            stmt_start = i + 1
        elif t == "__global__" and not any(k == "other" for k, _ in stack):
            i = _kernel(tokens, i, stmt_start, stack, kernels, skipped)
            stmt_start = i + 1
            continue
        elif t == "__shared__":
            end = i
            while end < n and tokens[end] not in (";", "{", "}"):
                end += 1
            stmt = tokens[stmt_start:end]
            if "extern" in stmt and len(stmt) >= 3 and stmt[-1] == "]" and stmt[-2] == "[":
                name = stmt[-3]
                ns = [v for k, v in stack if k == "ns"]
                for sym in ([name] + ([_mangle(ns, name)] if ns and all(ns) else [])):
                    if sym not in shared:
                        shared.append(sym)
        i += 1
    return ParseResult(kernels, skipped, shared)


def _kernel(tokens, i, stmt_start, stack, kernels, skipped) -> int:
    """Parse the declaration whose ``__global__`` is tokens[i]; return the index to resume at."""
    n = len(tokens)
    head = tokens[stmt_start:i]
    j = i + 1
    name = None
    while j < n:
        t = tokens[j]
        if t in _SKIP_WITH_PARENS and j + 1 < n and tokens[j + 1] == "(":
            j = _match(tokens, j + 1, "(", ")") + 1
            continue
        if t == "(" and j > 0 and re.fullmatch(r"[A-Za-z_]\w*", tokens[j - 1]):
            name = tokens[j - 1]
            break
        if t in (";", "{", "}"):
            return j
        j += 1
    if name is None:
        return j
    close = _match(tokens, j, "(", ")")
    params = [_param(p) for p in _split_params(tokens[j + 1 : close])]
    k = close + 1
    while k < n and tokens[k] not in ("{", ";"):
        k += 1
    is_def = k < n and tokens[k] == "{"
    extern_c = any(kind == "C" for kind, _ in stack) or any(
        head[m] == "extern" and m + 1 < len(head) and head[m + 1] == '"C"' for m in range(len(head))
    )
    ns = [v for kind, v in stack if kind == "ns"]
    if "template" in head:
        skipped[name] = "it is a template (name expressions are not supported by the emulator)"
    elif not extern_c:
        skipped.setdefault(name, 'it is not declared extern "C"')
    elif is_def:
        if any(v == "" for v in ns):
            skipped[name] = "it is in an anonymous namespace"
        else:
            qual = "::" + "::".join(ns + [name])
            kernels[name] = KernelInfo(name, qual, True, params)
            skipped.pop(name, None)
    # resume after the parameter list; a definition's body is walked normally
    return k
