"""The trial's bad-input cases: spec files, YAML, spec fields, --set values and options."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trial_support import FAST, Broke, Case, baseline, cli, expect_no_bug, expect_user_error, invoke, write


def spec_cases() -> Iterator[Case]:
    controls = [c for c in range(32) if chr(c) not in "\t\n\r"] + [0x7f, 0x85, 0xfeff]
    for code in controls:
        def check(tmp: Path, code: int = code) -> None:
            (tmp / "s.yaml").write_text(f"name: a{chr(code)}b\nmodels: [vit_micro]\n", encoding="utf-8")
            result = invoke("run", tmp / "s.yaml", "--dry-run")
            expect_no_bug(result, (2,))
        yield Case("bad input: spec bytes", f"control character U+{code:04X}", check)
    for label, data in [("binary", b"\x00\x01binary"), ("latin-1", "name: caf\xe9\n".encode("latin-1")),
                        ("utf-16", "name: x\n".encode("utf-16")), ("lone surrogate", b"name: \xed\xa0\x80\n"),
                        ("truncated utf-8", b"name: \xe2\x82"), ("gzip", b"\x1f\x8b\x08\x00"),
                        ("png", b"\x89PNG\r\n\x1a\n"), ("nul in middle", b"name: fast\nmodels: [\x00]\n"),
                        ("empty", b""), ("only spaces", b"   \n  \n"), ("BOM", b"\xef\xbb\xbfname: [\n")]:
        yield Case("bad input: spec bytes", label,
                   lambda tmp, data=data: expect_no_bug(invoke("run", write(tmp / "s.yaml", data), "--dry-run"), (2,)))
    malformed = ["name: [unclosed", "name: {a: 1", "- a\nb: 2", "name: 'x", ": no key", "a: b: c",
                 "name: x\n  bad indent: 1", "[1, 2", "key: @reserved", "\tname: tab", "name: *undefined",
                 "&a [*a]", "name: !!python/object:os.system x", "name: !custom x", "!!binary aGk=",
                 "name: x\nname: y", "? [a, b]\n: c", "%YAML 9.9\n---\nname: x", "--- a\n--- b"]
    for text in malformed:
        yield Case("bad input: YAML", repr(text)[:40],
                   lambda tmp, text=text: expect_no_bug(invoke("run", write(tmp / "s.yaml", text), "--dry-run"), (2,)))
    wrong_types: list[tuple[str, Any]] = [
        ("name", 5), ("name", ""), ("name", "a b"), ("name", "x" * 500), ("models", "vit_micro"), ("models", []),
        ("models", ["nope"]), ("models", [None]), ("methods", [{"base": "nope"}]), ("methods", ["mpvg[x=1]"]),
        ("methods", [{"base": "mpvg", "last_ln_pe": 99}]), ("datasets", ["mnist"]), ("datasets", [1]),
        ("seeds", [-1]), ("seeds", [2**40]), ("seeds", ["0"]), ("seeds", [True]), ("seeds", list(range(200_000))),
        ("recipe", {"epochs": 0}), ("recipe", {"epochs": 1.5}), ("recipe", {"lr": float("nan")}),
        ("recipe", {"lr": float("inf")}), ("recipe", {"lr": -1}), ("recipe", {"batch_size": 0}),
        ("recipe", {"nope": 1}), ("recipe", []), ("zip", [["models", "nope"]]), ("include", [{"model": "x"}]),
        ("exclude", [{}]), ("exclude", [{"model": "vit_micro"}]), ("executor", {"name": "k8s"}),
        ("executor", {"workers": 0}), ("data", {"num_workers": -1}), ("data", {"roots": {"mnist": "/x"}}),
        ("results", {"db": 5}), ("model_overrides", {"nope": {}}), ("model_overrides", {"vit_micro": {"img_size": 16}}),
        ("model_overrides", {"vit_micro": {"img_size": 7}}), ("init_from", "zzzz"), ("init_from", {"dataset": "nope"}),
        ("dataset_overrides", {"digits": {"num_classes": 5}}), ("slurm", {"time": "forever"}),
        ("slurm", {"mem": "lots"}), ("slurm", {"additional_parameters": {"time": 5}}), ("unknown_field", 1),
        ("recipe", {"batch_size": 100_000}), ("recipe", {"param_groups": [{"match": ["*"], "lr_scale": 0}]}),
        ("recipe", {"param_groups": [{"match": ["nothing"], "lr_scale": 1}]}),
    ]
    for field, value in wrong_types:
        def check(tmp: Path, field: str = field, value: Any = value) -> None:
            doc = {**FAST, field: value}
            expect_no_bug(invoke("run", write(tmp / "s.yaml", json.dumps(doc)), "--dry-run"), (2,))
        yield Case("bad input: spec fields", f"{field}={json.dumps(value)[:30]}", check, timeout_s=120)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8))
    yield Case("bad input: YAML", "alias bomb", lambda tmp: expect_user_error(
        invoke("run", write(tmp / "s.yaml", bomb), "--dry-run"), "expands"), timeout_s=20)
    yield Case("bad input: YAML", "nested 10,000 deep", lambda tmp: expect_no_bug(
        invoke("run", write(tmp / "s.yaml", "[" * 10_000 + "]" * 10_000), "--dry-run"), (2,)))
    yield Case("bad input: spec bytes", "2 MB spec", lambda tmp: expect_user_error(
        invoke("run", write(tmp / "s.yaml", "# " + "x" * 2_000_000), "--dry-run"), "limit"))

    def fifo(tmp: Path) -> None:
        os.mkfifo(tmp / "f.yaml")
        for command in (["run", tmp / "f.yaml", "--dry-run"], ["status", tmp / "f.yaml"], ["cancel", tmp / "f.yaml"]):
            expect_user_error(cli(*command, timeout=20))
    yield Case("bad input: spec files", "a FIFO as the spec", fifo)
    for path in ("/dev/zero", "/dev/null", "/dev/urandom", "/proc/self/mem", "/", "/nonexistent/s.yaml"):
        yield Case("bad input: spec files", path, lambda tmp, path=path: expect_user_error(
            cli("run", path, "--dry-run", timeout=20)))
    for name in ("a\nb.yaml", "a\rb.yaml", "a\x1bb.yaml", " .yaml", "-.yaml", "ü.yaml"):
        def odd(tmp: Path, name: str = name) -> None:
            (tmp / name).write_text("name: [")
            result = invoke("run", tmp / name)
            expect_user_error(result, "malformed")
            if len([line for line in result.output.splitlines() if line.startswith("Error")]) != 1:
                raise Broke(f"not one line: {result.output!r}")
        yield Case("bad input: spec files", f"path {name!r}", odd)


# --------------------------------------------------------------------- bad options / --set


def option_cases() -> Iterator[Case]:
    sets = ["recipe.epochs=-1", "recipe.epochs=abc", "recipe.lr=.nan", "recipe.lr=.inf", "recipe.batch_size=0",
            "seeds=[-1]", "seeds=notalist", "models=[nope]", "methods=[nope]", "name=a\x07", "recipe=5",
            "recipe.epochs.x=1", "=1", "recipe.=1", "recipe.epochs", ".=.", "a.b.c.d.e=1", "recipe.epochs=[",
            "model_overrides.vit_micro.img_size=16", "recipe.batch_size=99999", "executor.workers=0",
            "recipe.param_groups=[{match: ['*'], lr_scale: 0}]", "datasets=[imagenet]", "seeds=[0, 0]",
            "recipe.epochs=!!python/object:os.system x", "recipe.epochs=1e400", "name=" + "x" * 5000]
    for item in sets:
        expected = (0,) if item == "datasets=[imagenet]" else (2,)  # a dry run reads no data roots
        yield Case("bad input: --set and options", f"--set {item[:40]!r}", lambda tmp, item=item, expected=expected: expect_no_bug(
            invoke("run", write(tmp / "s.yaml", json.dumps(FAST)), "--dry-run", "--set", item), expected), timeout_s=120)
    options = [["--only", ""], ["--only", ","], ["--only", "model="], ["--only", "axis=x"], ["--only", "model=nope"],
               ["--only", "seed=x"], ["--only", "method=mpvg"], ["--checkpoint-every-min", "nan"],
               ["--checkpoint-every-min", "inf"], ["--checkpoint-every-min", "-1"], ["--checkpoint-every-min", "0"],
               ["--workers", "0"], ["--workers", "-3"], ["--device", "tpu"], ["--executor", "k8s"],
               ["--compile", "maybe"], ["--runs-dir", "r" * 300], ["--db", "d" * 300 + ".db"],
               ["--db", "postgresql://nobody@127.0.0.1:1/x"], ["--db", "nosuchdialect://x"], ["--runs-dir", "/proc"]]
    for option in options:
        def check(tmp: Path, option: list[str] = option) -> None:
            write(tmp / "s.yaml", json.dumps(FAST))
            dry = [] if option[0] in ("--runs-dir", "--db", "--device") else ["--dry-run"]
            expect_no_bug(invoke("run", tmp / "s.yaml", *dry, *option), (2,))
        yield Case("bad input: --set and options", " ".join(option)[:40], check, timeout_s=60)
    other = [["logs", ""], ["logs", " "], ["cancel", ""], ["logs", "zzzz"], ["logs", "../../etc/passwd"],
             ["logs", "%"], ["logs", "_"], ["logs", "'; DROP TABLE runs;--"], ["status", "--db", "missing.db"],
             ["report", "--table", "9"], ["report", "--format", "xml"], ["report", "--metric", "worst"],
             ["analyze", "zzzz"], ["recipes", "nope"], ["logs", "KEY", "--tail", "0"], ["logs", "KEY", "--tail", "-2"],
             ["logs", "KEY", "--tail", "x"], ["report", "-o", "/proc/nope/x.md"]]
    for command in other:
        def check(tmp: Path, command: list[str] = command) -> None:
            run_dir, key = baseline(tmp)
            args = [key[:8] if a == "KEY" else a for a in command]
            expect_no_bug(invoke(*args), (2,))
        yield Case("bad input: --set and options", " ".join(command)[:40], check)
