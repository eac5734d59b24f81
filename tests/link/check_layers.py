#!/usr/bin/env python3
"""The module map as a test: every #include "MODULE/..." in a module's
headers and sources must name the module itself or one it may depend on
(ARCHITECTURE.md, "Modules"). A back-edge fails with the file and line."""
import pathlib
import re
import sys

MAY_USE = {
    "core": set(),
    "net": {"core"},
    "store": {"core"},
    "oauth": {"core", "net", "store"},
    "tokens": {"core", "net", "store", "oauth"},
    "login": {"core", "net", "store", "oauth", "tokens"},
    "proxy": {"core", "net", "store", "oauth", "tokens"},
    "ipc": {"core", "net"},
    "gateway": {"core", "net", "store", "oauth", "tokens", "proxy", "ipc"},
    "api": {"core", "net", "store", "oauth", "tokens", "login", "proxy", "ipc", "gateway"},
    "client": {"core"},
    "daemon": {"core", "net", "store", "oauth", "tokens", "login", "proxy", "ipc", "gateway", "api"},
    "ctl": {"core", "client"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([a-z_]+)/')


def check(root: pathlib.Path) -> list[str]:
    problems = []
    seen = 0
    for module, allowed in MAY_USE.items():
        folder = root / module
        if not folder.is_dir():
            problems.append(f"{module}/: the module is missing")
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix not in (".hpp", ".cpp"):
                continue
            seen += 1
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                m = INCLUDE.match(line)
                if not m:
                    continue
                used = m.group(1)
                if used in MAY_USE and used != module and used not in allowed:
                    problems.append(f"{path.relative_to(root)}:{number}: {module} may not include {used}/ "
                                    f"(it may use: {', '.join(sorted(allowed)) or 'nothing of ours'})")
    stray = sorted(p.name for p in root.iterdir()
                   if p.is_dir() and (p / "include").is_dir() and p.name not in MAY_USE)
    for name in stray:
        problems.append(f"{name}/: a module that the layering table does not know; add it to MAY_USE")
    if seen == 0:
        problems.append(f"{root}: no sources found")
    return problems


def self_test() -> None:
    """The check must catch a back-edge: core including net/."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        for module in MAY_USE:
            (root / module / "src").mkdir(parents=True)
            (root / module / "src" / "a.cpp").write_text(f'#include "{module}/a.hpp"\n')
        assert check(root) == [], check(root)
        (root / "core" / "src" / "b.cpp").write_text('#include "core/a.hpp"\n  #include "net/loop.hpp"\n')
        found = check(root)
        assert len(found) == 1 and found[0].startswith("core/src/b.cpp:2: core may not include net/"), found


def main() -> int:
    self_test()
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2])
    problems = check(root)
    for p in problems:
        print("FAIL:", p)
    if not problems:
        print(f"ok: the files of {len(MAY_USE)} modules keep the layering")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
