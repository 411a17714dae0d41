"""``emcore fit FILE``: a user's CSV/TSV file fitted, summarised, labels written;
bad files and options are one line on stderr and exit status 2."""

from __future__ import annotations

import csv
import subprocess

import numpy as np
import pytest

from emcore import GaussianMixture, select_model
from emcore import _cli
from emcore._fit_command import read_table
from emcore.datasets import OLD_FAITHFUL_COLUMNS, load_old_faithful
from emcore.summary import summarise

from _commands import emcore_command


def _write(path, names, X, delimiter=","):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(names)
        w.writerows([[repr(float(x)) for x in row] for row in X])
    return path


@pytest.fixture
def faithful_csv(tmp_path):
    return _write(tmp_path / "faithful.csv", OLD_FAITHFUL_COLUMNS, load_old_faithful())


def _fit(argv, capsys):
    status = _cli.main(["fit", *map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


def test_given_model_prints_its_summary_and_writes_labels(faithful_csv, tmp_path, capsys):
    out_path = tmp_path / "labels.csv"
    status, out, err = _fit([faithful_csv, "--components", 2, "--covariance", "full",
                             "--seed", 3, "--tol", 1e-8, "--out", out_path,
                             "--parameters"], capsys)
    assert status == 0, err
    X = load_old_faithful()
    gm = GaussianMixture(n_components=2, covariance_type="full", tol=1e-8,
                         random_state=3).fit(X)
    # the same fit as the estimator's, summarised with the file's column names
    expected = summarise(gm, X, parameters=True, feature_names=OLD_FAITHFUL_COLUMNS)
    assert out.rstrip("\n") == str(expected)
    assert "eruptions" in out and "waiting" in out
    with open(out_path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["label", "p0", "p1"]
    labels = np.array([int(r[0]) for r in rows[1:]])
    proba = np.array([[float(x) for x in r[1:]] for r in rows[1:]])
    np.testing.assert_array_equal(labels, gm.predict(X))
    np.testing.assert_array_equal(proba, gm.predict_proba(X))


def test_model_chosen_by_bic(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (60, 2)), rng.normal(8, 1, (60, 2))])
    path = _write(tmp_path / "two.tsv", ["a", "b"], X, delimiter="\t")
    status, out, err = _fit([path, "--seed", 1, "--covariance", "spherical"], capsys)
    assert status == 0, err
    sel = select_model(X, n_components=range(1, 7), covariance_types=("spherical",),
                       random_state=1, max_iter=100, tol=1e-3)
    best = sel.best
    assert out.startswith(f"Chosen by BIC over 6 models: {best.n_components} components, "
                          "spherical covariance\n")
    assert best.n_components == 2
    assert f"{best.bic:.3f}" in out


def test_sniffed_delimiter(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("u;v\n1;2\n3;4.5\n")
    names, X = read_table(str(path))
    assert names == ["u", "v"]
    np.testing.assert_array_equal(X, [[1, 2], [3, 4.5]])


@pytest.mark.parametrize("content, message", [
    ("a,b\n1,2\n3,x\n", "column 'b' is not numeric (line 3: 'x')"),
    ("a,b\n1,2\n3,\n", "column 'b' is not numeric (line 3: '')"),
    ("a,b\n1,2\n3,nan\n", "column 'b' has a missing or non-finite value"),
    ("1,2\n3,4\n", "the first row must be a header"),
    ("a,b\n1,2\n3\n", "line 3 has 1 fields, the header has 2"),
    ("a,b\n", "no data rows after the header"),
    ("", "the file is empty"),
])
def test_bad_files_are_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    status, out, err = _fit([path], capsys)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("emcore fit: error: ")
    assert message in err
    assert out == ""


@pytest.mark.parametrize("argv, message", [
    (["--components", "0"], "--components must be a positive integer"),
    (["--max-iter", "-1"], "--max-iter must be >= 0"),
    (["--tol", "-1"], "--tol must be >= 0"),
    (["--jobs", "0"], "--jobs must be a positive integer or -1"),
    (["--family", "no_such_family"], "no_such_family"),
    (["--family", "poisson", "--covariance", "full"], "--covariance is for the Gaussian"),
    (["--components", "300", "--covariance", "full"], "n_components"),
])
def test_bad_options_are_one_line(faithful_csv, capsys, argv, message):
    status, out, err = _fit([faithful_csv, *argv], capsys)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("emcore fit: error: ")
    assert message in err


def test_missing_file_and_parquet_without_pyarrow(tmp_path, capsys, monkeypatch):
    status, _, err = _fit([tmp_path / "none.csv"], capsys)
    assert status == 2 and "none.csv: no such file" in err
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    import builtins
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    status, _, err = _fit([path], capsys)
    assert status == 2 and "reading Parquet needs pyarrow" in err


def test_unwritable_out(faithful_csv, tmp_path, capsys):
    status, _, err = _fit([faithful_csv, "--components", "2", "--covariance", "full",
                           "--out", tmp_path / "no" / "dir" / "labels.csv"], capsys)
    assert status == 2 and err.startswith("emcore fit: error: --out ")


def test_installed_command(faithful_csv, tmp_path):
    # the entry point, outside the repository (cwd: never the uncompiled source)
    proc = subprocess.run(emcore_command() + ["fit", str(faithful_csv), "--components",
                                              "2", "--covariance", "full"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("GaussianMixture: gaussian, full covariance (mclust VVV)")
    assert "Clustering table:" in proc.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,oops\n")
    proc = subprocess.run(emcore_command() + ["fit", str(bad)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"emcore fit: error: {bad}: column 'b' is not numeric " \
                          "(line 2: 'oops')\n"
    assert "Traceback" not in proc.stderr


def test_other_family_chooses_g_by_bic(tmp_path, capsys):
    from emcore import MixtureModel

    rng = np.random.default_rng(1)
    X = np.vstack([rng.poisson(1.0, (80, 2)), rng.poisson(12.0, (80, 2))]).astype(float)
    path = _write(tmp_path / "counts.csv", ["u", "v"], X)
    status, out, err = _fit([path, "--family", "poisson", "--seed", 0], capsys)
    assert status == 0, err
    bics = [MixtureModel(n_components=k, family="poisson", random_state=0,
                         max_iter=100, tol=1e-3).fit(X).bic(X) for k in range(1, 7)]
    k = int(np.argmin(bics)) + 1
    assert out.startswith(f"Chosen by BIC over 6 models: {k} components\n")
    assert f"MixtureModel: poisson, {k} component" in out
    assert f"{min(bics):.3f}" in out


def test_plot_is_written(faithful_csv, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    fig = tmp_path / "fig.png"
    status, _, err = _fit([faithful_csv, "--components", "2", "--covariance", "full",
                           "--plot", fig], capsys)
    assert status == 0, err
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    status, _, err = _fit([faithful_csv, "--components", "2", "--covariance", "full",
                           "--plot", tmp_path / "no" / "fig.png"], capsys)
    assert status == 2 and err.startswith("emcore fit: error: --plot ")


def test_plot_without_matplotlib(faithful_csv, tmp_path, capsys, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    status, _, err = _fit([faithful_csv, "--components", "2", "--covariance", "full",
                           "--plot", tmp_path / "fig.png"], capsys)
    assert status == 2
    assert err == "emcore fit: error: --plot needs matplotlib, which is not installed: " \
                  "pip install matplotlib (or emcore-learn[plot])\n"


def test_quoted_cells_and_blank_lines(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('\n"a","b"\n"1","2.5"\n\n3,4\n')
    names, X = read_table(str(path))
    assert names == ["a", "b"]
    np.testing.assert_array_equal(X, [[1, 2.5], [3, 4]])


def test_multiline_messages_are_one_line(faithful_csv, capsys, monkeypatch):
    from emcore import _fit_command

    def fails(args, X):
        raise ValueError("first line\nsecond line")

    monkeypatch.setattr(_fit_command, "_fit", fails)
    status, _, err = _fit([faithful_csv], capsys)
    assert status == 2 and err == "emcore fit: error: first line second line\n"



def test_covariance_takes_mclust_names_and_all(tmp_path, capsys):
    """--covariance takes an mclust name (that model: the estimator's own fit) and
    'all' (the BIC choice over mclust's fourteen, as select_model makes it)."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (60, 2)), rng.normal(8, 1, (60, 2))])
    path = _write(tmp_path / "two.csv", ["a", "b"], X)
    status, out, err = _fit([path, "--components", 2, "--covariance", "VEI",
                             "--seed", 1], capsys)
    assert status == 0, err
    gm = GaussianMixture(n_components=2, covariance_type="VEI", random_state=1,
                         max_iter=100, tol=1e-3).fit(X)
    assert f"{gm.score(X) * X.shape[0]:.3f}" in out.replace(",", "")
    status, out, err = _fit([path, "--components", 2, "--covariance", "all",
                             "--seed", 1], capsys)
    assert status == 0, err
    sel = select_model(X, n_components=[2], covariance_types="all", random_state=1,
                       max_iter=100, tol=1e-3)
    assert len(sel.table) == 14
    assert out.startswith("Chosen by BIC over 14 models: 2 components, "
                          f"{sel.best.covariance_type} covariance\n")
