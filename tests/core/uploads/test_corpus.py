"""The fuzz corpus through :func:`core.uploads.read.read_upload`: every case gives its outcome and writes nothing."""
from __future__ import annotations

import tempfile
import warnings
from collections import Counter

import pytest
from PIL import Image, ImageFile

from core.uploads.policy import (
    ACCEPTED_FORMATS,
    UPLOAD_REASONS,
)
from tests.core.uploads.corpus import CATEGORIES, corpus, outcome_of
from tests.core.uploads.crafted import FORMATS, KNOWN_REASONS
from tests.core.uploads.no_writes import (
    TALLY,
    TALLY_BY_CATEGORY,
    DiskWatch,
    run_without_writes,
)


def test_corpus_is_large_and_covers_every_format() -> None:
    cats = corpus()
    total = sum(len(c) for c in cats.values())
    assert total >= 500, total
    for fmt in FORMATS:
        assert len(cats[f"truncated-{fmt}"]) >= 40, (fmt, len(cats[f"truncated-{fmt}"]))
    assert len(cats["random"]) >= 100
    assert set(UPLOAD_REASONS) == KNOWN_REASONS
    assert set(ACCEPTED_FORMATS) == set(FORMATS)


@pytest.mark.parametrize("category", CATEGORIES)
def test_fuzz_category(category: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    cases = corpus()[category]
    results = run_without_writes(cases, tmp_path_factory)
    counts = Counter(outcome for _, outcome, _ in results)
    TALLY.update(counts)
    TALLY_BY_CATEGORY[category] = counts
    failures = [f"{case.name}: got {outcome}: {problem}" for case, outcome, problem in results if problem]
    summary = f"{len(failures)}/{len(cases)} failed in {category} ({dict(counts)}):\n"
    assert not failures, summary + "\n".join(failures[:40])


def test_disk_watch_would_notice_writes(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The no-write check is not vacuous: each kind of write it guards against is reported."""
    with DiskWatch(str(tmp_path_factory.mktemp("selftest"))) as watch:
        with open("in-cwd.txt", "w") as fh:  # relative: lands in the private cwd
            fh.write("x")
        with tempfile.NamedTemporaryFile(delete=False) as fh:  # lands in the private TMPDIR
            fh.write(b"x")
    assert any("audit: open" in p and "in-cwd.txt" in p for p in watch.hard)
    assert any(p.startswith("cwd gained in-cwd.txt") for p in watch.hard)
    assert any(p.startswith("private TMPDIR gained") for p in watch.hard)
    assert any("tempfile.mkstemp" in p for p in watch.hard)


def test_fuzz_leaves_global_pil_and_warning_state_alone() -> None:
    before = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS, list(warnings.filters), warnings.showwarning)
    for cat in ("special", "truncated-PNG", "mutated"):
        for case in corpus()[cat][:80]:
            outcome_of(case)
    after = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS, list(warnings.filters), warnings.showwarning)
    assert after == before
