"""``python -m rlbuf.demo`` runs (a small configuration) and reports consistent samples."""

from rlbuf import demo


def test_demo_runs_and_every_sample_is_consistent(capsys):
    demo.main(["--lanes", "2", "--capacity", "200", "--steps-per-add", "10", "--iterations", "30",
               "--batch-size", "16"])
    out = capsys.readouterr().out
    assert out.count("all samples consistent: True") == 2, out
    assert "wrap-arounds" in out and out.rstrip().endswith("demo done")
