#!/usr/bin/env python3
"""Reads cargo --unit-graph JSON files (in command order) and prints, per command, how many
compile units it needs that no earlier command built (workspace members and registry crates).
A unit's identity is what cargo hashes into its metadata: package, target, mode, features,
the profile's settings (not its name) and its dependencies' identities."""
import json, sys
seen = set()
for path in sys.argv[1:]:
    g = json.load(open(path))
    units = g["units"]
    memo = {}
    def ident(i):
        if i in memo: return memo[i]
        u = units[i]
        prof = {k: v for k, v in u["profile"].items() if k != "name"}
        key = (u["pkg_id"], u["target"]["name"], tuple(u["target"]["kind"]), u["mode"],
               tuple(u["features"]), json.dumps(prof, sort_keys=True), u.get("platform"),
               tuple(sorted(ident(d["index"]) for d in u["dependencies"])))
        h = hash(key)
        memo[i] = h
        return h
    ids = [ident(i) for i in range(len(units))]
    new = [i for i, h in enumerate(ids) if h not in seen]
    # run-custom-build units execute a build script, not rustc; count compiles only
    ws = [units[i] for i in new if units[i]["pkg_id"].startswith("path+") and units[i]["mode"] != "run-custom-build"]
    reg = [units[i] for i in new if not units[i]["pkg_id"].startswith("path+") and units[i]["mode"] != "run-custom-build"]
    names = sorted(f'{u["pkg_id"].split("#")[-1].split("@")[0]}:{u["target"]["name"]}({u["mode"]})' for u in ws)
    print(f"{path}: {len(units)} units, new: {len(ws)} workspace, {len(reg)} registry")
    if ws: print("   workspace:", " ".join(names), "…" if len(names) > 40 else "")
    if reg: print("   registry:", " ".join(sorted({u['pkg_id'].split('#')[-1] for u in reg}))[:600])
    seen.update(ids)
