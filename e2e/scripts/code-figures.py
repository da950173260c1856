#!/usr/bin/env python3
"""Size figures of the workspace's Rust code (issue 15's "Must show"): the longest functions and
the largest non-test files.

How it counts (a careful line-based scan, not a full parser such as `syn`):
- Every `*.rs` file under the workspace except `target/` and hidden directories.
- A small lexer drops comments, string/byte/raw-string and char literals (lifetimes kept apart),
  so braces inside them never count.
- A function is the `fn <name>` keyword up to the brace that closes its body; its length is the
  number of lines from the `fn` line to that brace, both included. Declarations without a body
  (`fn f();` in traits) are skipped.
- Test code: files named `tests.rs`, files under a `tests/` or `benches/` directory, and the
  extent of every `#[cfg(test)]` item (`mod tests { … }` and the like).
- A file's non-test lines: its lines minus the lines of its `#[cfg(test)]` items (0 for a test
  file).

- The crate map: the edges between workspace crates from `cargo metadata` (normal and build
  dependencies; dev-dependencies listed apart), and the agent's dependency count the way issue
  15's earlier figures were taken: `cargo tree -p zetaback-agent -e normal --prefix none`, lines
  (sort -u) and distinct crate names. Needs cargo on PATH; no build.

Usage: code-figures.py [--top N] [ROOT]   (ROOT defaults to the repository this script is in)
"""

import json
import os
import subprocess
import sys


def lex(text):
    """Yields (token, line) with comments and literals removed; literals become the token 'LIT'."""
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if c.isspace():
            i += 1
            continue
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        line += 1
                    i += 1
            continue
        # raw strings: r"…", r#"…"#, br#"…"#
        raw = None
        if c == "r" or (c == "b" and i + 1 < n and text[i + 1] == "r"):
            j = i + (1 if c == "r" else 2)
            hashes = 0
            while j < n and text[j] == "#":
                hashes += 1
                j += 1
            if j < n and text[j] == '"' and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
                raw = (j + 1, '"' + "#" * hashes)
        if raw:
            start_line = line
            end = text.find(raw[1], raw[0])
            end = n if end < 0 else end
            line += text.count("\n", i, end)
            i = end + len(raw[1])
            yield "LIT", start_line
            continue
        if c == '"' or (c == "b" and i + 1 < n and text[i + 1] == '"'):
            start_line = line
            i += 1 if c == '"' else 2
            while i < n and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                if i < n and text[i] == "\n":
                    line += 1
                i += 1
            i += 1
            yield "LIT", start_line
            continue
        if c == "'":
            # char literal or lifetime
            if i + 1 < n and text[i + 1] == "\\":
                j = text.find("'", i + 2)
                i = n if j < 0 else j + 1
                yield "LIT", line
                continue
            if i + 2 < n and text[i + 2] == "'":
                i += 3
                yield "LIT", line
                continue
            i += 1  # a lifetime's quote
            continue
        if c.isalnum() or c == "_":
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            yield text[i:j], line
            i = j
            continue
        yield c, line
        i += 1


def scan(text):
    """Returns (functions, test_ranges): functions as (name, first_line, last_line)."""
    toks = list(lex(text))
    funcs, tests = [], []
    k = 0
    while k < len(toks):
        tok, line = toks[k]
        if tok == "#" and k + 5 < len(toks) and [t for t, _ in toks[k + 1 : k + 6]] == ["[", "cfg", "(", "test", ")"]:
            # the item after the attribute: up to its `;` or its closing brace
            j = k + 7
            while j < len(toks) and toks[j][0] not in ("{", ";"):
                j += 1
            if j < len(toks) and toks[j][0] == "{":
                end = match(toks, j)
                tests.append((line, toks[end][1]))
            elif j < len(toks):
                tests.append((line, toks[j][1]))
        if tok == "fn" and k + 1 < len(toks) and (toks[k + 1][0][:1].isalpha() or toks[k + 1][0][:1] == "_"):
            name = toks[k + 1][0]
            depth, j = 0, k + 2
            while j < len(toks):
                t = toks[j][0]
                if t in "([":
                    depth += 1
                elif t in ")]":
                    depth -= 1
                elif depth == 0 and t in ("{", ";"):
                    break
                j += 1
            if j < len(toks) and toks[j][0] == "{":
                end = match(toks, j)
                funcs.append((name, line, toks[end][1]))
        k += 1
    return funcs, tests


def match(toks, open_index):
    depth = 0
    for j in range(open_index, len(toks)):
        if toks[j][0] == "{":
            depth += 1
        elif toks[j][0] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(toks) - 1


def is_test_file(rel):
    parts = rel.split(os.sep)
    return parts[-1] == "tests.rs" or "tests" in parts[:-1] or "benches" in parts[:-1]


def main():
    args = sys.argv[1:]
    top = 5
    if args[:1] == ["--top"]:
        top, args = int(args[1]), args[2:]
    root = args[0] if args else os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    functions, files = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "target" and not d.startswith("."))
        for f in sorted(filenames):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root)
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
            total = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
            funcs, tests = scan(text)
            test_file = is_test_file(rel)
            in_test = lambda l: test_file or any(a <= l <= b for a, b in tests)
            for name, a, b in funcs:
                functions.append((b - a + 1, rel, name, a, in_test(a)))
            test_lines = total if test_file else sum(b - a + 1 for a, b in outermost(tests))
            files.append((total - test_lines, total, rel))
    functions.sort(key=lambda f: (-f[0], f[1], f[3]))
    files.sort(key=lambda f: (-f[0], f[2]))
    print(f"## Longest non-test functions (lines from `fn` to its closing brace; top {top})")
    for length, rel, name, a, _ in [f for f in functions if not f[4]][:top]:
        print(f"{length:5}  {rel}:{a}  {name}")
    print(f"## Longest test functions (top {top})")
    for length, rel, name, a, _ in [f for f in functions if f[4]][:top]:
        print(f"{length:5}  {rel}:{a}  {name}")
    print(f"## Largest non-test files (non-test lines / all lines; top {top})")
    for nontest, total, rel in files[:top]:
        print(f"{nontest:5} / {total:5}  {rel}")
    print(f"## Totals: {len(files)} files, {len(functions)} functions, "
          f"{sum(1 for f in functions if f[0] > 100 and not f[4])} non-test functions over 100 lines")
    crate_map(root)


def crate_map(root):
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked"],
        cwd=root, check=True, capture_output=True, text=True).stdout)
    members = set(meta["workspace_members"])
    names = {p["id"]: p["name"] for p in meta["packages"]}
    print("## Crate map (workspace crates only; `a -> b` = a depends on b)")
    for node in sorted(meta["resolve"]["nodes"], key=lambda n: names[n["id"]]):
        if node["id"] not in members:
            continue
        normal, dev = set(), set()
        for dep in node["deps"]:
            if dep["pkg"] not in members:
                continue
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if kinds & {None, "build"}:
                normal.add(names[dep["pkg"]])
            elif "dev" in kinds:
                dev.add(names[dep["pkg"]])
        line = f"{names[node['id']]} -> {', '.join(sorted(normal)) or '(none)'}"
        if dev:
            line += f"   [dev: {', '.join(sorted(dev))}]"
        print(line)
    tree = subprocess.run(
        ["cargo", "tree", "-p", "zetaback-agent", "-e", "normal", "--prefix", "none", "--locked"],
        cwd=root, check=True, capture_output=True, text=True).stdout.splitlines()
    lines = set(tree)
    crates = {l.split()[0] for l in lines if l.strip()}
    print(f"## zetaback-agent dependencies (normal): {len(lines)} distinct `cargo tree` lines, "
          f"{len(crates)} distinct crates (the agent itself included)")


def outermost(ranges):
    out = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


if __name__ == "__main__":
    main()
