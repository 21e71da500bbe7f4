"""`python -m analogai_fl.certificates` (`analogai_fl.certificates`): what it refuses, and
that its advice works when followed. No process is started (the Deployment Engine's own
tests, which use these files, are in test_deployment.py)."""

from analogai_fl.certificates import main


def exit_code(*argv):
    try:
        return main(list(argv))
    except SystemExit as exit_:  # parser.exit
        return exit_.code


def test_certificates_refused_for_no_host_or_an_existing_out_are_written_as_advised(
        tmp_path, capsys):
    """An empty --hosts, and an --out that already holds a CA, are refused naming what to
    do, before any file is written; one host, another --out, or the named files removed,
    as the messages say, write them."""
    assert exit_code("--out", str(tmp_path / "a"), "--hosts", ",") == 2
    assert "--hosts: give at least one name or IP address" in capsys.readouterr().err
    assert exit_code("--out", str(tmp_path / "a"), "--hosts", "127.0.0.1") == 0
    written = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    assert sorted(written) == ["ca.crt", "ca.key", "server.crt", "server.key"]
    capsys.readouterr()
    assert exit_code("--out", str(tmp_path / "a"), "--supernodes", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("already holds ca.key, ca.crt, server.key, server.crt; remove them "
                        "or choose another --out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == written  # kept
    assert exit_code("--out", str(tmp_path / "b")) == 0  # another --out
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(written)
    for name in written:  # or remove them, all named in one message
        (tmp_path / "a" / name).unlink()
    assert exit_code("--out", str(tmp_path / "a"), "--supernodes", "1") == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        [*written, "supernode_1", "supernode_1.pub"])
