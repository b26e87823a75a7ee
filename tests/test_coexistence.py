"""failmode's evaluate package lives at failmode.evaluate and never shadows Hugging Face's `evaluate`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

METRIC = '''
import datasets
import evaluate


class ExactMatchCount(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="count of exact matches", citation="", inputs_description="",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"matches": sum(int(p == r) for p, r in zip(predictions, references))}
'''


def _run(code: str, cwd: Path) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_hf_evaluate_wins_from_the_repository_root():
    # `python -c` puts the current directory (the repo root, which has an evaluate/ folder) first on sys.path.
    out = _run("""
        import evaluate, failmode.evaluate
        print(evaluate.__file__)
        print(hasattr(evaluate, "load"), list(failmode.evaluate.__path__))
    """, cwd=REPO)
    hf_file, flags = out.splitlines()[:2]
    assert "site-packages" in hf_file and str(REPO / "evaluate") not in hf_file
    assert flags.startswith("True") and "evaluate" in flags


def test_both_work_in_either_import_order(tmp_path):
    (tmp_path / "exact_match_count.py").write_text(METRIC)
    for first, second in (("evaluate", "failmode.evaluate"), ("failmode.evaluate", "evaluate")):
        out = _run(f"""
            import importlib, os
            os.environ["HF_HUB_OFFLINE"] = "1"
            importlib.import_module({first!r}); importlib.import_module({second!r})
            import evaluate
            from failmode.evaluate.pipeline import fit_head
            from failmode.head import HeadParams
            metric = evaluate.load({str(tmp_path / "exact_match_count.py")!r})
            print(metric.compute(predictions=[1, 2, 3], references=[1, 0, 3])["matches"],
                  callable(fit_head) and HeadParams().lam == 0.5)
        """, cwd=tmp_path)
        assert out.split()[-2:] == ["2", "True"]
