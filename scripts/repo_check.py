#!/usr/bin/env python3
"""Checks what review would otherwise find by hand, for `make lint`:

- LICENSE is the Apache License 2.0 and every manifest (each crate, the fuzz
  workspace and the web client) declares Apache-2.0;
- every Make target a user can run is documented, so `make help` lists it;
- the pinned toolchain is at least the `rust-version` the manifests promise.
"""

import json
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
LICENSE_ID = "Apache-2.0"


def license_problems():
    problems = []
    text = (ROOT / "LICENSE").read_text()
    if "Apache License" not in text or "Version 2.0, January 2004" not in text:
        problems.append("LICENSE is not the Apache License 2.0")
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())
    if workspace["workspace"]["package"].get("license") != LICENSE_ID:
        problems.append(f"Cargo.toml: workspace license is not {LICENSE_ID}")
    manifests = [ROOT / member / "Cargo.toml" for member in workspace["workspace"]["members"]]
    manifests.append(ROOT / "fuzz" / "Cargo.toml")
    for manifest in manifests:
        package = tomllib.loads(manifest.read_text())["package"]
        declared = package.get("license")
        if declared != LICENSE_ID and declared != {"workspace": True}:
            problems.append(f"{manifest.relative_to(ROOT)}: license is {declared!r}, not {LICENSE_ID}")
    web = json.loads((ROOT / "clients" / "web" / "package.json").read_text())
    if web.get("license") != LICENSE_ID:
        problems.append(f"clients/web/package.json: license is {web.get('license')!r}, not {LICENSE_ID}")
    return problems


def make_help_problems():
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.M)
    targets = phony.group(1).split() if phony else []
    documented = set(re.findall(r"^([a-z-]+):.*## ", makefile, re.M))
    return [f"Makefile: `{target}` has no `## description`, so `make help` leaves it out"
            for target in targets if target not in documented]


def toolchain_problems():
    pinned = tomllib.loads((ROOT / "rust-toolchain.toml").read_text())["toolchain"]["channel"]
    promised = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    as_tuple = lambda version: tuple(int(part) for part in version.split("."))
    if as_tuple(pinned)[:2] < as_tuple(promised)[:2]:
        return [f"rust-toolchain.toml pins {pinned}, older than rust-version {promised}"]
    return []


def main():
    problems = license_problems() + make_help_problems() + toolchain_problems()
    for problem in problems:
        print(f"repo-check: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print("repo-check: licence in every manifest, every Make target documented, toolchain pinned")


if __name__ == "__main__":
    main()
