import pytest

from spard.io import atomic_write, atomic_write_text


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "plot.png"
    atomic_write_text(target, "old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


def test_each_atomic_write_gets_its_own_temporary_file_with_the_target_suffix(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_text(str(len(seen)))

    atomic_write(tmp_path / "a.png", write)
    atomic_write(tmp_path / "a.png", write)
    # two writers of the same file (a grid and a --report-only beside it) never share a temporary path
    assert seen[0] != seen[1] and all(p.suffix == ".png" and p.parent == tmp_path for p in seen)
    assert (tmp_path / "a.png").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
