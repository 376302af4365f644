"""Addresses are probed first: a server that never answers, one that is not a Ray dashboard, or a
closed port is an input error within the probe timeout, before anything is tokenized or sent."""

import http.server
import socket
import threading

import pytest

from sft_tune.cli import main


@pytest.fixture
def quick_probe(monkeypatch):
    monkeypatch.setenv("SFT_TUNE_PROBE_TIMEOUT_S", "1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture
def silent_server():
    """Accepts connections and never answers (the case that hung `submit` for 25 s)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def plain_http_server():
    """An HTTP server that is not a Ray dashboard (it serves no GET: 501)."""
    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _submit(port, capsys):
    code = main(["submit", "--address", f"http://127.0.0.1:{port}", "--", "report", "runs/x"])
    return code, capsys.readouterr().err


def test_submit_to_a_server_that_never_answers_fails_within_the_timeout(
    quick_probe, silent_server, capsys
):
    code, err = _submit(silent_server, capsys)
    assert code == 2 and f"127.0.0.1:{silent_server}" in err and "did not answer" in err
    assert "Traceback" not in err


def test_submit_to_an_http_server_that_is_not_a_dashboard(quick_probe, plain_http_server, capsys):
    code, err = _submit(plain_http_server, capsys)
    assert code == 2 and "must be a Ray dashboard" in err and "answered HTTP 501" in err


def test_submit_to_a_closed_port(quick_probe, capsys):
    port = _closed_port()
    code, err = _submit(port, capsys)
    assert code == 2 and "nothing accepted a connection" in err


def test_search_on_an_unreachable_cluster_fails_before_the_data_is_prepared(
    quick_probe, tmp_path, capsys, tiny_bert, toy_files, monkeypatch
):
    from conftest import write_space

    import sft_tune.core.prepare as prepare_module

    def never(*args, **kwargs):
        raise AssertionError("the data was prepared before the address was probed")

    monkeypatch.setattr(prepare_module, "prepare_data", never)
    space = write_space(tmp_path, tiny_bert, toy_files, "away")
    port = _closed_port()
    assert main(["search", "--space", str(space), "--address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert "--address" in err and f"127.0.0.1:{port}" in err and "nothing accepted" in err


def _search(port, tmp_path, tiny_bert, toy_files, capsys):
    from conftest import write_space

    space = write_space(tmp_path, tiny_bert, toy_files, "away")
    code = main(["search", "--space", str(space), "--address", f"127.0.0.1:{port}"])
    return code, capsys.readouterr().err


def test_search_on_a_server_that_never_answers_fails_within_the_timeout(
    quick_probe, silent_server, tmp_path, tiny_bert, toy_files, capsys
):
    # A Ray head's GCS answers HTTP/2 at once; a port that accepts and stays silent is not one.
    code, err = _search(silent_server, tmp_path, tiny_bert, toy_files, capsys)
    assert code == 2 and f"127.0.0.1:{silent_server}" in err and "did not answer" in err
    assert "Traceback" not in err and not (tmp_path / "sweeps").exists()


def test_search_on_a_server_that_is_not_a_ray_head(
    quick_probe, plain_http_server, tmp_path, tiny_bert, toy_files, capsys
):
    code, err = _search(plain_http_server, tmp_path, tiny_bert, toy_files, capsys)
    assert code == 2 and "not as a Ray head" in err and "GCS address" in err
