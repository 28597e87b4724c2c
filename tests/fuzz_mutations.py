"""How the fuzz test mutates valid inputs: TOML recipes and binary files.

A recipe is mutated as text (a line deleted, duplicated or swapped, a character, a number, a string, a key or a
value replaced, junk inserted) or as structure (parsed, a value deleted, retyped or moved, written back by the
small TOML writer `to_toml`); `mutate_recipe` picks between the two. A binary file (ONNX, checkpoint, npz) is
mutated byte by byte by `byte_mutants`: truncations, bit flips and overwritten runs. Every choice comes from
the random.Random passed in, so a seed fixes every mutant.
"""

from __future__ import annotations

import datetime
import json
import random
import re
import tomllib


# ---------------------------------------------------------------- recipe text mutations

NUMBER = re.compile(r"(?<![\w.\"'-])-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.\"'])")
KEY = re.compile(r"^(\s*)([A-Za-z_][\w-]*)(\s*=)", re.M)
STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"')
VALUE = re.compile(r"^(\s*[A-Za-z_][\w-]*\s*=\s*)(.+)$", re.M)

# Replacements for a number; RUN_NUMBERS leaves out those that ask for days of honest work (1e11 epochs).
NUMBERS = ["0", "-1", "-7", "1e999", "-1e999", "nan", "inf", "-inf", "1e308", "0.0", "-0.0", "1e-320", str(2**63),
           str(-2**63 - 1), str(2**64), "9" * 40, "99999999999", "3.5", '"7"', "true", "[1, 2]", "{}", "[]"]
RUN_NUMBERS = [n for n in NUMBERS if n not in ("99999999999",)]
STRINGS = ["", "x" * 100_000, "ünïcödé 漢字 🙂", "../../../../../../etc/passwd", "/dev/zero", "/dev/null", "/",
           "{data}/nope/none.npz", "{data}", "~nobody_fuzz/x", "\\u0000", "a:b", "digits:nope", "cifar10:../../etc",
           "qemu-aarch64:nope", "ssh://", "ssh://@:", "local", "model", "%s%n", "${HOME}", "C:\\\\x", "\\\\", " ",
           "small_cnn_28", "cifar_resnet20", "train", "export", "ptq", "digits:test", "nan"]
VALUES = ['"str"', "1", "1.5", "true", "[]", '[1, "a"]', "{}", "{ a = 1 }", "[[1]]", '"""multi\nline"""',
          "2021-01-01", "07:32:00", "1979-05-27T07:32:00Z", "'literal'", "[{ kind = \"ptq\" }]", "-0", "+1",
          "0x10", "0o7", "0b1", "1_000"]
JUNK = ["[[stages]]", "[[stages]]\nkind = \"ptq\"", "[model]", "[data]", "[budgets]", "[target]", "[[targets]]",
        "kind = ", "= 3", "[model", "x = \"unterminated", "\x00", "a.b.c = 1", "\"\" = 1", "[a.b]\nc = 1",
        "name = \"dup\"", "a = " + "[" * 3000 + "]" * 3000, "a = " + "{b = " * 2000 + "1" + "}" * 2000,
        "mean = [" + ", ".join(["0.5"] * 50_000) + "]", "# comment", "\ufeff",
        "[[stages]]\nkind = \"train\"\nepochs = 1",
        "[bench]\nruns = 1", "reference_stage = \"nope\"", "[data.preprocess]\nstd = [0.0]"]
CHARS = list("\"[]{}=.,#\\\n\t 0'-+_:aZé漢\x7f") + ["\x00", "\u2028", "🙂"]


def _typo(key: str, rng: random.Random) -> str:
    if len(key) < 2:
        return key + "x"
    i = rng.randrange(len(key))
    return rng.choice([key[:i] + key[i + 1:], key[:i] + key[i] + key[i:], key.upper(),
                       key[:i] + rng.choice("abcxyz_-") + key[i + 1:], key + "s"])


def _sub_one(pattern: re.Pattern, text: str, rng: random.Random, make) -> str:
    found = list(pattern.finditer(text))
    if not found:
        return text
    m = rng.choice(found)
    return text[:m.start()] + make(m) + text[m.end():]


def text_mutation(text: str, rng: random.Random, *, vocabulary: list[str], numbers: list[str]) -> tuple[str, str]:
    lines = text.split("\n")
    op = rng.choice(["delete", "duplicate", "swap", "char", "truncate", "junk", "number", "number", "string", "string",
                     "key", "key", "value", "value", "header", "unicode"])
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    if op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(i, lines[i])
    elif op == "swap":
        lines[i], lines[j] = lines[j], lines[i]
    elif op == "char":
        pos = rng.randrange(len(text) or 1)
        return text[:pos] + rng.choice(CHARS) + text[pos + 1:], op
    elif op == "truncate":
        return text[:rng.randrange(len(text) or 1)], op
    elif op == "junk":
        lines.insert(i, rng.choice(JUNK))
    elif op == "number":
        return _sub_one(NUMBER, text, rng, lambda m: rng.choice(numbers)), op
    elif op == "string":
        return _sub_one(STRING, text, rng, lambda m: json.dumps(rng.choice(STRINGS), ensure_ascii=False)
                        .replace("\\\\", "\\")), op
    elif op == "key":
        return _sub_one(KEY, text, rng, lambda m: m.group(1) + (
            _typo(m.group(2), rng) if rng.random() < 0.5 else rng.choice(vocabulary)) + m.group(3)), op
    elif op == "value":
        return _sub_one(VALUE, text, rng, lambda m: m.group(1) + rng.choice(VALUES)), op
    elif op == "header":
        return _sub_one(re.compile(r"^\[\[?[\w.]+\]\]?", re.M), text, rng,
                        lambda m: rng.choice(["[[stages]]", "[stages]", "[model]", "[[model]]", "[data]", "[budgets]",
                                              "[target]", "[[targets]]", "[bench]", "[nope]", "[data.evaluation]"])), op
    elif op == "unicode":
        return _sub_one(STRING, text, rng, lambda m: '"' + m.group(1) + rng.choice(["é", "\\u00e9", "🙂", "\\t",
                                                                                     "\\\\", " ", "\\u0000"]) + '"'), op
    return "\n".join(lines), op


# ---------------------------------------------------------------- recipe structure mutations

# Values a structural mutation puts anywhere: every TOML type, odd sizes and odd contents.
TYPED = [0, -1, 1, 7, 2**63 - 1, 2**63, -2**70, 1.5, -0.0, 1e-300, 1e300, float("nan"), float("inf"), True, False,
         "", "x" * 5000, "ünï 🙂", "../x", "/dev/zero", "{data}/x", "digits:test", "ptq", "local",
         [], [1], ["a", 1.5],
         [[1, 2], [3]], [0.5] * 3, {}, {"a": 1}, {"kind": "ptq"}, [{"kind": "export"}], [{"dataset": "digits:test"}],
         {"dataset": "digits:test", "limit": 0}, datetime.date(2020, 1, 1), datetime.time(7, 32)]


def _paths(node, prefix=()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, prefix + (index,))
    return found


def _get(node, path):
    for part in path:
        node = node[part]
    return node


# Same-type replacements: a recipe that still validates but asks for something odd (zero epochs, one sample).
SAME_TYPE = {int: [0, 1, 2, 3, 8, 100, 1000, -1], float: [0.0, 1e-6, 0.5, 0.999, 1.0, 2.0, 100.0, -0.5]}


def _same_type(value, rng: random.Random, strings: list[str]):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return rng.choice(SAME_TYPE[type(value)])
    if isinstance(value, str):
        return rng.choice(strings)
    if isinstance(value, list) and value:
        return rng.choice([value[:-1], value + value[-1:], value[::-1]])
    return value


def _strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    return [s for child in children for s in _strings(child)]


def structure_mutation(table: dict, rng: random.Random, *, vocabulary: list[str]) -> str:
    paths = [p for p in _paths(table) if p]
    path = rng.choice(paths)
    parent, last = _get(table, path[:-1]), path[-1]
    op = rng.choice(["delete", "set", "set", "retype", "same", "same", "same", "rename", "add", "duplicate", "clear",
                     "wrap", "swap"])
    if op == "same":
        parent[last] = _same_type(parent[last], rng, _strings(table) + ["", "digits:train", "local", "ptq", "train"])
    elif op == "retype":
        value = parent[last]
        parent[last] = rng.choice([str(value), [value], {"value": value}, 1, 1.0, True])
    elif op == "delete":
        del parent[last]
    elif op == "set":
        parent[last] = rng.choice(TYPED)
    elif op == "rename" and isinstance(last, str):
        parent[_typo(last, rng) if rng.random() < 0.5 else rng.choice(vocabulary)] = parent.pop(last)
    elif op == "add":
        target = parent if isinstance(parent, dict) else table
        target[rng.choice(vocabulary + ["unknown_key", "kind", "name"])] = rng.choice(TYPED)
    elif op == "duplicate" and isinstance(parent, list):
        parent.insert(last, parent[last])
    elif op == "clear":
        value = parent[last]
        parent[last] = type(value)() if isinstance(value, (list, dict, str)) else None
        if parent[last] is None:
            del parent[last]
    elif op == "wrap":
        parent[last] = [parent[last]] if rng.random() < 0.7 else {"value": parent[last]}
    elif op == "swap":
        other = rng.choice(paths)
        try:
            other_parent = _get(table, other[:-1])
            parent[last], other_parent[other[-1]] = other_parent[other[-1]], parent[last]
        except (KeyError, IndexError, TypeError):
            pass
    return op


# ---------------------------------------------------------------- the TOML writer

def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def to_toml(table: dict) -> str:
    """A small TOML writer: every top-level key on its own line, tables inline (valid TOML 1.0)."""
    return "\n".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()) + "\n"


# ---------------------------------------------------------------- one recipe mutant

def mutate_recipe(text: str, rng: random.Random, *, vocabulary: list[str], numbers: list[str],
                  edits: int | None = None) -> tuple[str, str]:
    """One mutant of a valid recipe: 1-3 text-level edits, or structural edits written back as TOML (then
    sometimes a text-level edit on top). `edits` fixes the count."""
    if rng.random() < 0.45:
        table = tomllib.loads(text)
        ops = [structure_mutation(table, rng, vocabulary=vocabulary) for _ in range(edits or rng.randint(1, 2))]
        text = to_toml(table)
        if edits is None and rng.random() < 0.3:
            text, op = text_mutation(text, rng, vocabulary=vocabulary, numbers=numbers)
            ops.append(op)
        return text, "structure:" + "+".join(ops)
    ops = []
    for _ in range(edits or rng.choice([1, 1, 2, 3])):
        text, op = text_mutation(text, rng, vocabulary=vocabulary, numbers=numbers)
        ops.append(op)
    return text, "text:" + "+".join(ops)


# ---------------------------------------------------------------- byte-level mutations

def _flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        pos = rng.randrange(len(out))
        out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


def _overwrite(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    length = rng.choice([1, 4, 16, 256])
    fill = rng.choice([b"\xff", b"\x00", bytes(rng.randrange(256) for _ in range(length))])
    return data[:start] + (fill * length)[:length] + data[start + length:]


def byte_mutants(data: bytes, rng: random.Random, *, truncations: int, flips: int,
                 overwrites: int) -> list[tuple[str, bytes]]:
    """(label, bytes): `truncations` prefixes (the first bytes, the middle, all but the last, and seeded others),
    bit flips, and overwritten runs of bytes."""
    cuts = {1, 2, 4, 8, 16, len(data) // 2, len(data) - 1}
    while len(cuts) < truncations:
        cuts.add(rng.randrange(1, len(data)))
    found = [(f"truncated at {cut} of {len(data)}", data[:cut]) for cut in sorted(cuts)]
    found += [("bit-flipped", _flip_bits(data, rng)) for _ in range(flips)]
    found += [("overwritten", _overwrite(data, rng)) for _ in range(overwrites)]
    return found
