#!/usr/bin/env python3
"""Fails when two files of src/ import each other, directly or through others.

The folders of src/ follow the request's path, and each layer uses only the ones below
it (README, "Architecture"). A `use crate::…` (or any `crate::…`/`super::…` path) that
points back up makes a cycle; this lists every cycle as the files on it. A parent
naming its child (`child::item`) is an edge too, so a child that reaches back into its
parent's file closes a cycle. Module declarations (`mod x;`) and a file's own unit tests
(`#[cfg(test)] mod tests`) are not edges.
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(__file__), "..", "src")


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return ()
    return tuple(rel)


def main():
    files = {}
    for root, _, names in os.walk(SRC):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(root, n)
                files[module_of(p)] = os.path.relpath(p, os.path.join(SRC, ".."))
    edges = {m: set() for m in files}
    for mod, path in files.items():
        text = open(os.path.join(SRC, "..", path), encoding="utf-8").read()
        # A file's own unit tests may reach anywhere; they are not part of the layering.
        text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
        text = re.sub(r"//.*", "", text)
        # A child module is named by its bare name in its parent (`upgrade::handle`).
        children = set(re.findall(r"^\s*(?:pub(?:\([a-z]+\))? )?mod ([a-z_0-9]+);", text, re.M))
        for m in re.finditer(r"(?<![A-Za-z0-9_:])([a-z_0-9]+)::([A-Za-z_][A-Za-z0-9_]*)", text):
            if m.group(1) in children:
                edges[mod].add(mod + (m.group(1),))
        for m in re.finditer(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
            parts = m.group(2).split("::")[1:]
            if m.group(1) == "crate":
                base = ()
            else:
                # super:: of a/b.rs (module a::b) is a; of a/mod.rs (module a) is the root.
                base = mod[:-1]
            target = base + tuple(parts)
            # The longest prefix that is a file is the file the path lands in.
            while target and target not in files:
                target = target[:-1]
            if target != mod and target in files and target != ():
                edges[mod].add(target)
    # Tarjan's strongly connected components.
    index, low, stack, on, sccs = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    for comp in sccs:
        names = sorted(files[m] for m in comp)
        print("import cycle: " + " <-> ".join(names))
        for m in sorted(comp):
            inside = sorted(files[t] for t in edges[m] if t in comp)
            print(f"  {files[m]} uses {', '.join(inside)}")
    if sccs:
        sys.exit(1)
    print(f"no import cycle among {len(files)} files of src/")


if __name__ == "__main__":
    main()
