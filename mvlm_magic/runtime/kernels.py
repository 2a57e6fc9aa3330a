"""Our own int4 matrix multiplication and attention for OpenVINO on CPUs where OpenVINO's are slow.

OpenVINO 2026.4 multiplies NNCF's int4 weights in integer arithmetic only on CPUs with VNNI (AVX-512 or
AVX-VNNI). Elsewhere it decompresses them to f32 first and reads memory at ~45% of the machine's bandwidth,
so decoding a token takes about twice as long as reading the weights; with AVX-512 VNNI it runs prompts in
bf16 and decodes at ~0.6x of memory speed (docs/benchmarks.md). The operation in
`mvlm_magic/kernels/int4_matmul.cpp` quantizes the activations to int8 and multiplies in integer arithmetic
(AVX2, or AVX-512 VNNI where the CPU has it: `int4_avx512.hpp`), reading memory as one stream; the one in
`kv_attention.cpp` keeps the key/value cache itself, where OpenVINO's fused attention spends ~0.4 ms per layer
and token at a few hundred cached positions on AVX2 CPUs.

How it is used:
1. `extension()` compiles the C++ files once per OpenVINO version and instruction set (`instruction_set()`)
   with the system's C++ compiler (our own shipped source, nothing downloaded) into the cache folder, and
   registers them with OpenVINO.
2. `copies(folder)` writes, once per export: a copy of the language IR in which the symmetric int4 MatMuls are
   replaced by Int4MatMul (the same weights in its order, the same scales; those reading one input, such as
   q/k/v, as one operation), the int8 head by Int8MatMul and each attention with its cache by KVAttention; and,
   for the AVX-512 build, a copy of the vision IR with Int8MatMul. A copy is the same for both builds.
3. The engine compiles the copies instead of vision.xml and language.xml where `helps_here()`. Without a
   compiler, on other CPUs, for f32 answers or fp16 / fp32 exports, everything stays as it was.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import openvino as ov
from openvino import opset13

from ..store import default_cache_dir
from .device import core

SOURCE = Path(__file__).resolve().parent.parent / "kernels" / "extension.cpp"  # includes the others: one library
FORMAT = 9  # part of the derived IR's name: bump when what the copy holds changes
NEEDED_FLAGS = {"avx2", "fma", "f16c"}
AVX512_FLAGS = NEEDED_FLAGS | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}  # our VNNI paths (int4_avx512.hpp)
COMPILER_FLAGS = {"avx2": ["-mavx2", "-mfma", "-mf16c"],
                  "avx512": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]}


class _StandIn(ov.Op):
    """A C++ operation's stand-in while building the IR in Python (never executed): x (..., K) -> (..., N)."""

    class_type_info = ov.DiscreteTypeInfo("StandIn", "mvlm")

    def __init__(self, inputs=None):
        super().__init__(self, inputs)

    def validate_and_infer_types(self):
        x, weight = self.get_input_partial_shape(0), self.get_input_partial_shape(1)
        self.set_output_type(0, ov.Type.f32, ov.PartialShape(list(x)[:-1] + [weight[0]]))

    def clone_with_new_inputs(self, new_inputs):
        return type(self)(new_inputs)

    def get_type_info(self):
        return self.class_type_info

    def visit_attributes(self, visitor):
        return True


class Int4MatMul(_StandIn):
    class_type_info = ov.DiscreteTypeInfo("Int4MatMul", "mvlm")


class Int8MatMul(_StandIn):
    class_type_info = ov.DiscreteTypeInfo("Int8MatMul", "mvlm")


class KVAttention(_StandIn):
    """Stand-in for the attention that keeps its own cache: (q, k, v, mask, scale) -> q's shape."""

    class_type_info = ov.DiscreteTypeInfo("KVAttention", "mvlm")

    def validate_and_infer_types(self):
        self.set_output_type(0, ov.Type.f32, self.get_input_partial_shape(0))


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def instruction_set() -> str | None:
    """Which build of our operations this CPU runs: "avx512" (with VNNI), "avx2", or None.
    MVLM_KERNEL_ISA=avx2 picks the AVX2 build on an AVX-512 CPU (to compare the two, or to test both)."""
    flags = cpu_flags()
    if not NEEDED_FLAGS <= flags:
        return None
    best = "avx512" if AVX512_FLAGS <= flags else "avx2"
    return "avx2" if os.environ.get("MVLM_KERNEL_ISA") == "avx2" else best


def helps_here() -> bool:
    """True where our operations are faster than OpenVINO's own: CPUs with AVX2 and no VNNI (where OpenVINO
    multiplies int4 weights in f32) and CPUs with AVX-512 VNNI (where it runs prompts in bf16 and decodes at
    ~0.6x of memory speed). CPUs with AVX-VNNI but no AVX-512, and those with AMX (whose matrix units OpenVINO
    uses for prompts), keep OpenVINO's path: not measured."""
    flags = cpu_flags()
    if not NEEDED_FLAGS <= flags or flags & {"amx_int8", "amx_bf16"}:
        return False
    return AVX512_FLAGS <= flags or not flags & {"avx512_vnni", "avx_vnni"}


_why_not: str | None = None


@lru_cache(maxsize=1)
def extension() -> Path | None:
    """The compiled operation, registered with our OpenVINO core; None (see `why_not`) when it cannot be built."""
    global _why_not
    try:
        library, _why_not = build()
        if library is not None:
            core().add_extension(str(library))
    except (OSError, RuntimeError) as error:  # an unwritable cache, a library OpenVINO refuses
        library, _why_not = None, f"the int4 kernel could not be built or loaded: {error}"
    return library


def why_not() -> str | None:
    """Why `extension()` returned None."""
    return _why_not


def build() -> tuple[Path | None, str | None]:
    """Compile the operation into the cache folder unless it is there already: (library, None) or (None, why not)."""
    isa = instruction_set()
    if platform.system() != "Linux" or platform.machine() != "x86_64" or isa is None:
        return None, "needs an x86-64 Linux CPU with AVX2, FMA and F16C"
    package = Path(ov.__file__).parent
    libs = package / "libs"
    openvino_lib, tbb_lib = sorted(libs.glob("libopenvino.so.*")), sorted(libs.glob("libtbb.so.*"))
    if not (openvino_lib and tbb_lib and (package / "include").is_dir()):
        return None, f"the openvino package at {package} has no headers or libraries to build against"
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler or not shutil.which(compiler):
        return None, "no C++ compiler found (install g++ or set CXX)"
    sources = b"".join(path.read_bytes() for path in sorted(SOURCE.parent.glob("*.[ch]pp")))
    key = hashlib.sha256(sources + ov.get_version().encode() + compiler.encode()).hexdigest()[:16]
    folder = default_cache_dir() / "kernels"
    library = folder / f"mvlm_kernels-{isa}-{key}.so"
    if library.is_file():
        return library, None
    folder.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkstemp(dir=folder, prefix=".building-", suffix=".so")[1])
    command = [compiler, "-O3", *COMPILER_FLAGS[isa], "-std=c++17", "-shared", "-fPIC",
               "-I", str(package / "include"), str(SOURCE), "-L", str(libs),
               f"-l:{openvino_lib[0].name}", f"-l:{tbb_lib[0].name}", f"-Wl,-rpath,{libs}", "-o", str(partial)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        failure = f"the C++ compiler failed: {done.stderr.strip()[-500:]}" if done.returncode else None
    except (OSError, subprocess.TimeoutExpired) as error:
        failure = f"the C++ compiler failed to run: {error}"
    if failure:
        partial.unlink(missing_ok=True)
        return None, failure
    os.replace(partial, library)  # atomic: a half-written library is never loaded
    return library, None


def _is(node, type_name: str) -> bool:
    return node.get_type_name() == type_name


def _decompressed_weight(matmul):
    """For `x @ W.T` (a MatMul with transpose_b), the node that computes W, past a final Convert; else None."""
    if not _is(matmul, "MatMul") or matmul.get_attributes() != {"transpose_a": False, "transpose_b": True}:
        return None
    node = matmul.input_value(1).get_node()
    return node.input_value(0).get_node() if _is(node, "Convert") else node


def _int4_weight(matmul) -> tuple[np.ndarray, np.ndarray] | None:
    """(bytes (N, K/2) as value + 8 in the operation's order, f16 scales (N, K/G) as bytes) when the MatMul's weight is
    NNCF's symmetric int4 decompression (Constant i4 -> Convert -> Multiply by a scale [-> Reshape] -> Convert)
    with groups of a multiple of 64; else None."""
    node = _decompressed_weight(matmul)
    if node is None or matmul.get_input_element_type(0) != ov.Type.f32:
        return None
    if _is(node, "Reshape"):
        node = node.input_value(0).get_node()
    if not _is(node, "Multiply"):
        return None
    first, second = (node.input_value(i).get_node() for i in range(2))
    if _is(second, "Convert"):
        first, second = second, first
    if not (_is(first, "Convert") and _is(second, "Constant")):
        return None
    weight = first.input_value(0).get_node()
    if not _is(weight, "Constant") or weight.get_element_type() != ov.Type.i4:
        return None
    shape = list(weight.get_output_shape(0))  # (N, groups, G) or (N, K) for one scale per row
    n, k = shape[0], int(np.prod(shape[1:]))
    groups = shape[1] if len(shape) == 3 else 1
    weight_shape = matmul.get_input_partial_shape(1)
    if not weight_shape.is_static or list(weight_shape.to_shape()) != [n, k]:
        return None
    if (k // groups) % 64 or second.get_output_element_type(0) != ov.Type.f16:
        return None
    scales = second.get_data().reshape(n, groups).view(np.uint8)  # f16 bytes: the CPU plugin leaves u8 alone
    nncf = weight.get_data().view(np.uint8).reshape(n, k // 2) ^ np.uint8(0x88)  # signed nibbles -> value + 8
    values = np.stack([nncf & 0x0F, nncf >> 4], axis=-1).reshape(n, k // 64, 2, 32)  # element 2i low, 2i+1 high
    packed = values[:, :, 0] | (values[:, :, 1] << 4)  # per 64 inputs: byte i = input i | input 32 + i << 4
    return packed.reshape(n, k // 2), scales


def _int8_weight(matmul) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(weight i8 (N, K), zero (N,), scale (N,)) when the MatMul's weight is NNCF's asymmetric
    int8 with one zero point and scale per row (Constant u8 -> Convert -> Subtract zero -> Multiply scale ->
    Convert), as the head of an int4 export; else None."""
    node = _decompressed_weight(matmul)
    if node is None or not _is(node, "Multiply") or not _is(node.input_value(1).get_node(), "Constant"):
        return None
    subtract, scale = node.input_value(0).get_node(), node.input_value(1).get_node()
    if not _is(subtract, "Subtract"):
        return None
    weight, zero = (subtract.input_value(i).get_node() for i in range(2))
    weight = weight.input_value(0).get_node() if _is(weight, "Convert") else weight
    zero = zero.input_value(0).get_node() if _is(zero, "Convert") else zero
    if not (_is(weight, "Constant") and _is(zero, "Constant")) or weight.get_element_type() != ov.Type.u8:
        return None
    n, k = weight.get_output_shape(0)
    if k % 32 or zero.get_data().size != n or scale.get_data().size != n:
        return None
    values = (weight.get_data().astype(np.int16) - 128).astype(np.int8)
    zeros = zero.get_data().astype(np.float32).reshape(n) - 128
    return values, zeros, scale.get_data().astype(np.float32).reshape(n)


def panels(rows: np.ndarray, unit: int = 32) -> np.ndarray:
    """Weight rows (N, B bytes) in the operations' order: panels of 4 rows interleaved by `unit` bytes (unit 0 of
    each of the 4 rows, then unit 1, ...), a last panel of fewer rows the same way; the shape stays (N, B).
    A token then reads one stream instead of 4 (int4_matmul.cpp's `unit_at` reads this order)."""
    n, width = rows.shape
    full = n // 4 * 4
    body = rows[:full].reshape(n // 4, 4, width // unit, unit).transpose(0, 2, 1, 3)
    rest = rows[full:].reshape(n - full, width // unit, unit).transpose(1, 0, 2)
    return np.concatenate([body.reshape(-1), rest.reshape(-1)]).reshape(n, width)


def rewrite_int4_matmuls(model: ov.Model) -> int:
    """Replace the symmetric-int4 MatMuls of `model` by Int4MatMul, in place, and, where there were any, the
    per-row int8 ones (the head) by Int8MatMul; returns how many int4 MatMuls it replaced.
    MatMuls that read the same input with the same group size (q, k, v; gate, up) become one operation whose
    output is split again: the input is quantized once and there are fewer calls per token.
    (The language models of int8 exports stay on OpenVINO's own path: not measured with our operation.)"""
    found = [(op, _int4_weight(op)) for op in model.get_ordered_ops()]
    int4 = [(op, weights) for op, weights in found if weights is not None]
    _replace_by_input(int4, Int4MatMul, lambda weights: (weights[0].shape[1], weights[1].shape[1]))
    if int4:
        rewrite_int8_matmuls(model)
    return len(int4)


def rewrite_int8_matmuls(model: ov.Model) -> int:
    """Replace the per-row int8 MatMuls of `model` (the head; every MatMul of an export's vision model) by
    Int8MatMul, in place, those reading one input (q, k, v) as one operation; returns how many it replaced."""
    found = [(op, _int8_weight(op)) for op in model.get_ordered_ops()]
    int8 = [(op, weights) for op, weights in found if weights is not None]
    _replace_by_input(int8, Int8MatMul, lambda weights: weights[0].shape[1])
    return len(int8)


def _replace_by_input(found: list, operation, same) -> None:
    """One `operation` for each group of MatMuls that read the same output and whose weights agree on
    `same(weights)`: their weights concatenated by rows, the first one (the weight bytes) in panel order."""
    groups: dict[tuple, list] = {}
    for op, weights in found:
        source = op.input_value(0)
        key = (source.get_node().get_name(), source.get_index(), same(weights))  # unique names
        groups.setdefault(key, []).append((op, weights))
    for group in groups.values():
        parts = [np.concatenate([weights[i] for _, weights in group]) for i in range(len(group[0][1]))]
        _replace([op for op, _ in group], operation, (panels(parts[0]), *parts[1:]))


def _cached_input(concat):
    """The new keys (or values) when `concat` is concat(cache, new) on positions with the cache read from a
    variable (through the beam Gather) and written back by an Assign; else None."""
    if not _is(concat, "Concat") or concat.get_input_size() != 2 or concat.get_attributes()["axis"] not in (-2, 2):
        return None
    past = concat.input_value(0).get_node()
    if _is(past, "Gather"):
        past = past.input_value(0).get_node()
    users = {target.get_node().get_type_name() for target in concat.output(0).get_target_inputs()}
    cached = _is(past, "ReadValue") and users == {"Assign", "ScaledDotProductAttention"}
    return concat.input_value(1) if cached else None


def use_kv_attention(model: ov.Model) -> int:
    """Replace each ScaledDotProductAttention over a stateful cache by KVAttention, in place, removing the
    cache's variables (the operation keeps the cache); returns how many it replaced. Only where the head size
    is a multiple of 8 and the mask is boolean, as the language models we export have."""
    inputs = {name: parameter for parameter in model.get_parameters() for name in parameter.output(0).get_names()}
    if not {"inputs_embeds", "attention_mask"} <= inputs.keys():
        return 0
    replaced = 0
    for sdpa in [op for op in model.get_ordered_ops() if _is(op, "ScaledDotProductAttention")]:
        if sdpa.get_input_size() != 5 or sdpa.get_attributes().get("causal"):
            continue
        q, keys, values, mask, scale = (sdpa.input_value(i) for i in range(5))
        new_keys, new_values = _cached_input(keys.get_node()), _cached_input(values.get_node())
        head = q.get_partial_shape()[3]
        if (new_keys is None or new_values is None or mask.get_element_type() != ov.Type.boolean
                or not _is(scale.get_node(), "Constant") or head.is_dynamic or head.get_length() % 8):
            continue
        node = KVAttention([q, new_keys, new_values, mask, scale])
        node.set_friendly_name(sdpa.get_friendly_name())
        _redirect(sdpa.output(0), node.output(0))
        for concat in (keys.get_node(), values.get_node()):
            for target in concat.output(0).get_target_inputs():
                if _is(target.get_node(), "Assign"):
                    assign = target.get_node()
                    model.remove_sink(assign)
                    model.remove_variable(model.get_variable_by_id(assign.get_variable_id()))
        replaced += 1
    # The prompt's past length was read off the cache's shape (for the mask): compute that shape from the inputs.
    for shape_of in [op for op in model.get_ordered_ops() if _is(op, "ShapeOf")]:
        cache = shape_of.input_value(0).get_node()
        cache = cache.input_value(0).get_node() if _is(cache, "Gather") else cache
        if _is(cache, "ReadValue") and model.get_variable_by_id(cache.get_variable_id()) is None:
            _, heads, _, head = cache.get_output_partial_shape(0)
            shape = _cache_shape(inputs["inputs_embeds"], inputs["attention_mask"], heads.get_length(),
                                 head.get_length(), shape_of.get_output_element_type(0))
            _redirect(shape_of.output(0), shape)
    return replaced


def _cache_shape(inputs_embeds, attention_mask, heads: int, head: int, element_type):
    """(B, heads, P, head) as a shape vector, P = the mask's length - the new positions."""
    embeds, mask = opset13.shape_of(inputs_embeds, element_type), opset13.shape_of(attention_mask, element_type)

    def dimension(shape, i: int):
        return opset13.gather(shape, opset13.constant([i], ov.Type.i64), opset13.constant(0))

    def constant(value: int):
        return opset13.constant([value], element_type)

    past = opset13.subtract(dimension(mask, 1), dimension(embeds, 1))
    return opset13.concat([dimension(embeds, 0), constant(heads), past, constant(head)], 0).output(0)


def _replace(matmuls: list, operation, weights) -> None:
    """Put one `operation` node (on the MatMuls' shared input, with the given weight constants) where the
    MatMuls were; several MatMuls get its output split back into theirs."""
    node = operation([matmuls[0].input_value(0)] + [opset13.constant(w).output(0) for w in weights])
    node.set_friendly_name(" + ".join(op.get_friendly_name() for op in matmuls))
    outputs = node.outputs()
    if len(matmuls) > 1:
        lengths = [op.get_output_partial_shape(0)[-1].get_length() for op in matmuls]
        outputs = opset13.variadic_split(outputs[0], -1, lengths).outputs()
    for matmul, output in zip(matmuls, outputs):
        _redirect(matmul.output(0), output)


def _redirect(old, new) -> None:
    """Make everything that reads output `old` read `new` instead."""
    for target in old.get_target_inputs():
        target.replace_source_output(new)


def align_constants(xml: Path, alignment: int = 64) -> None:
    """Rewrite a saved IR so that every constant starts on a 64-byte boundary of its .bin (OpenVINO packs them
    back to back). OpenVINO maps the file, so our operations read their weights in place: from an odd address
    every 64-byte load straddles two cache lines (measured: the weights sat at 13 mod 64)."""
    tree = ElementTree.parse(xml)
    data = [layer.find("data") for layer in tree.getroot().iter("layer") if layer.get("type") == "Const"]
    data = [d for d in data if d is not None and d.get("offset") is not None]
    spans = sorted({(int(d.get("offset")), int(d.get("size"))) for d in data})  # equal constants share one span
    moved, cursor = {}, 0
    with open(xml.with_suffix(".bin"), "rb") as old, open(xml.with_suffix(".aligned"), "wb") as new:
        for offset, size in spans:
            cursor = -(-cursor // alignment) * alignment
            new.seek(cursor)
            old.seek(offset)
            new.write(old.read(size))
            moved[offset, size] = cursor
            cursor += size
    for d in data:
        d.set("offset", str(moved[int(d.get("offset")), int(d.get("size"))]))
    os.replace(xml.with_suffix(".aligned"), xml.with_suffix(".bin"))
    tree.write(xml)


def copies(folder: Path) -> tuple[Path | None, Path | None]:
    """The export's (vision, language) copies with our operations, written on first use; None for either when
    there is nothing to rewrite. The vision copy (int8 MatMuls over 577 rows) only for the AVX-512 build, whose
    prompts beat OpenVINO's; on AVX2 they do not (docs/benchmarks.md)."""
    vision = int8_vision_model(folder) if instruction_set() == "avx512" else None
    return vision, int4_language_model(folder)


def int4_language_model(folder: Path) -> Path | None:
    """The export's language IR with Int4MatMul (and KVAttention), written next to language.xml on first use;
    None when the export has no symmetric int4 weights."""
    derived = Path(folder) / f"language.int4-v{FORMAT}.xml"
    if derived.is_file():
        return derived
    model = core().read_model(Path(folder) / "language.xml")
    if not rewrite_int4_matmuls(model):
        return None
    use_kv_attention(model)
    return save_copy(model, derived)


def int8_vision_model(folder: Path) -> Path | None:
    """The export's vision IR with Int8MatMul (for prompts of 577 rows: AVX-512 builds only), written next to
    vision.xml on first use; None when its MatMuls have no per-row int8 weights (fp16 and fp32 exports)."""
    derived = Path(folder) / f"vision.int8-v{FORMAT}.xml"
    if derived.is_file():
        return derived
    model = core().read_model(Path(folder) / "vision.xml")
    return save_copy(model, derived) if rewrite_int8_matmuls(model) else None


def save_copy(model: ov.Model, derived: Path) -> Path:
    """Save a rewritten IR as `derived` (NAME.KIND-vFORMAT.xml) and remove the copies of earlier formats."""
    folder = derived.parent
    # Save beside the export under temporary names, then rename: the .bin first, the .xml (what we look for) last.
    temporary = Path(tempfile.mkdtemp(dir=folder, prefix=".copy-"))
    try:
        ov.save_model(model, temporary / derived.name, compress_to_fp16=False)
        align_constants(temporary / derived.name)
        os.replace(temporary / derived.with_suffix(".bin").name, derived.with_suffix(".bin"))
        os.replace(temporary / derived.name, derived)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    kind = derived.name.rsplit("-v", 1)[0]  # e.g. language.int4
    for stale in folder.glob(f"{kind}-v*"):  # copies made by earlier versions of this file
        if not stale.name.startswith(derived.stem + "."):
            stale.unlink(missing_ok=True)
    return derived
