"""The antmaze and kitchen tasks' data path: Minari's real download code against a stand-in Hub on 127.0.0.1.

Minari downloads through huggingface_hub, which reads HF_ENDPOINT: the stand-in below answers the five
requests that client makes (list the namespace's datasets, HEAD/GET a file, the repository's revision and
its file tree), serving a tiny dataset in Minari's own layout, made with Minari's own API.
"""

import glob
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.parse

import numpy as np
import pytest

from conftest import ROOT, make_minari_dataset

COMMIT = "0" * 40


def make_minari_hub_dataset(root, dataset_id, env_id, env_kwargs, episodes=2, steps=10):
    """A tiny Minari dataset (conftest's), plus the metadata file through which the Hub lists a namespace."""
    make_minari_dataset(root, dataset_id, env_id, env_kwargs, episodes, steps, ref_max_score=4.0)
    namespaces = dataset_id.split("/")[:-1]  # the Hub lists a namespace's datasets and sub-namespaces in a file
    with open(os.path.join(root, namespaces[0], "namespace_metadata.json"), "w") as f:
        json.dump(
            {"datasets": [dataset_id], "namespaces": ["/".join(namespaces[:i]) for i in range(2, len(namespaces) + 1)]},
            f,
        )


class Hub:
    """The stand-in: `root` holds one folder per repository of the `farama-minari` organisation."""

    def __init__(self, root):
        self.root, self.cut, self.requests = str(root), set(), []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code, body=b"", headers=(), head=False, send=None):
                self.send_response(code)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body if send is None else body[:send])

            def answer(self, head):
                url = urllib.parse.urlparse(self.path)
                parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
                hub.requests.append(f"{self.command} {url.path}")
                as_json = [("Content-Type", "application/json")]
                if parts == ["api", "datasets"]:  # list the organisation's repositories
                    repos = [
                        {"id": f"farama-minari/{name}", "_id": name, "private": False} for name in os.listdir(hub.root)
                    ]
                    return self.reply(200, json.dumps(repos).encode(), as_json, head)
                if parts[:2] == ["api", "datasets"] and len(parts) >= 5 and parts[4] == "revision":
                    info = {
                        "id": f"farama-minari/{parts[3]}",
                        "sha": COMMIT,
                        "siblings": [{"rfilename": f} for f in hub.files(parts[3])],
                    }
                    return self.reply(200, json.dumps(info).encode(), as_json, head)
                if parts[:2] == ["api", "datasets"] and len(parts) >= 5 and parts[4] == "tree":
                    tree = [
                        {
                            "type": "file",
                            "path": f,
                            "size": os.path.getsize(os.path.join(hub.root, parts[3], f)),
                            "oid": "0",
                        }
                        for f in hub.files(parts[3])
                    ]
                    return self.reply(200, json.dumps(tree).encode(), as_json, head)
                if parts[0] == "datasets" and "resolve" in parts:
                    name = "/".join(parts[parts.index("resolve") + 2 :])
                    path = os.path.join(hub.root, parts[2], name)
                    if not os.path.isfile(path):
                        return self.reply(404, headers=[("X-Error-Code", "EntryNotFound")], head=head)
                    body = open(path, "rb").read()
                    headers = [("X-Repo-Commit", COMMIT), ("ETag", f'"{hashlib.sha1(body).hexdigest()}"')]
                    return self.reply(200, body, headers, head, send=len(body) // 2 if name in hub.cut else None)
                return self.reply(404, b"{}", as_json, head)

            def do_GET(self):
                self.answer(head=False)

            def do_HEAD(self):
                self.answer(head=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def files(self, repo):
        base = os.path.join(self.root, repo)
        return sorted(os.path.relpath(os.path.join(d, name), base) for d, _, names in os.walk(base) for name in names)


KITCHEN = ("FrankaKitchen-v1", {"tasks_to_complete": ["microwave", "kettle", "bottom burner", "light switch"]})


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """The remote's files: a tiny kitchen-mixed dataset under Minari's id for it."""
    root = tmp_path_factory.mktemp("remote")
    make_minari_hub_dataset(root, "D4RL/kitchen/mixed-v2", *KITCHEN)
    return root


@pytest.fixture
def hub(remote, tmp_path, monkeypatch):
    """A fresh stand-in Hub over a copy of the remote, and an empty Minari store and Hub cache for this test."""
    shutil.copytree(remote, tmp_path / "remote")
    hub = Hub(tmp_path / "remote")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    yield hub
    hub.server.shutdown()


def store_contents(tmp_path):
    return sorted(
        os.path.relpath(p, tmp_path / "store")
        for p in glob.glob(str(tmp_path / "store" / "**"), recursive=True)
        if os.path.isfile(p)
    )


def test_requirements_install_minaris_download_client():
    """Minari downloads through huggingface_hub, which only its `hf` extra installs: without it, every antmaze and
    kitchen task fails on a machine with network too."""
    lines = [line.split("#")[0].strip() for line in open(os.path.join(ROOT, "requirements.txt"))]
    (minari_line,) = [line for line in lines if line.startswith("minari")]
    assert minari_line.startswith("minari[hf]==")
    assert any(
        line.startswith("huggingface_hub==") for line in lines
    )  # pinned: the stand-in below speaks its version's requests
    from minari.storage.remotes import get_cloud_storage

    assert type(get_cloud_storage()).__name__ == "HuggingFaceStorage"  # raises ImportError without the extra


def test_the_readme_command_downloads_its_minari_data_and_trains(hub, run_script, tmp_path):
    result = run_script(
        "o3f_lapo.py",
        "--env-id",
        "kitchen-mixed-v0",
        "--output-dir",
        tmp_path / "runs",
        "--offline-steps",
        10,
        "--online-steps",
        5,
        "--utd",
        2,
        "--eval-freq",
        10,
        "--eval-episodes",
        1,
        "--batch-size",
        8,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert any(
        r.startswith("GET /datasets/farama-minari/D4RL/resolve/") and r.endswith("kitchen/mixed-v2/data/main_data.hdf5")
        for r in hub.requests
    )
    assert {"D4RL/kitchen/mixed-v2/data/main_data.hdf5", "D4RL/kitchen/mixed-v2/data/metadata.json"} <= set(
        store_contents(tmp_path)
    )
    assert not glob.glob(str(tmp_path / "store" / ".o3f-staging-*"))  # the staging folder is gone
    (summary,) = glob.glob(str(tmp_path / "runs" / "*" / "summary.json"))
    evaluations = json.load(open(summary))["evaluations"]
    assert [e["phase"] for e in evaluations] == [
        "offline",
        "online",
    ]  # trained offline, then acted online (float64 bounds)
    hub.requests.clear()  # a second run reads the local copy, not the network
    again = run_script(
        "o3f_iql.py",
        "--env-id",
        "kitchen-mixed-v0",
        "--output-dir",
        tmp_path / "runs",
        "--offline-steps",
        5,
        "--online-steps",
        0,
        "--eval-freq",
        5,
        "--eval-episodes",
        1,
        "--batch-size",
        8,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert hub.requests == []


def test_loading_reads_what_the_stand_in_served(hub, tmp_path, monkeypatch):
    import o3f_iql

    assert (
        fetch_command("kitchen-mixed-v0").returncode == 0
    )  # in its own process: huggingface_hub reads HF_ENDPOINT on import
    data = o3f_iql.read_minari("kitchen-mixed-v0")
    monkeypatch.setenv("MINARI_DATASETS_PATH", hub.root)  # the stand-in's files, read in place
    served = o3f_iql.read_minari("kitchen-mixed-v0")
    assert data["observations"].shape == (20, 59) and data["actions"].shape == (20, 9)
    for key in data:
        assert np.array_equal(data[key], served[key]), key


@pytest.mark.parametrize("fault", ["cut", "corrupt"])
def test_a_cut_or_corrupt_download_is_never_left_looking_complete(hub, run_script, tmp_path, fault):
    data_file = "kitchen/mixed-v2/data/main_data.hdf5"
    if fault == "cut":  # the server announces the whole file, sends half and hangs up
        hub.cut.add(data_file)
    else:  # a complete transfer of a damaged file
        path = tmp_path / "remote" / "D4RL" / data_file
        body = bytearray(path.read_bytes())
        body[len(body) // 3 :] = bytes(len(body) - len(body) // 3)
        path.write_bytes(bytes(body))
    result = run_script("o3f_iql.py", "--env-id", "kitchen-mixed-v0", "--output-dir", tmp_path / "runs", timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "could not download D4RL/kitchen/mixed-v2 for kitchen-mixed-v0" in line and "nothing was kept" in line
    assert not os.path.exists(tmp_path / "store" / "D4RL" / "kitchen" / "mixed-v2")  # no dataset that looks complete
    assert not glob.glob(str(tmp_path / "store" / ".o3f-staging-*"))


def test_no_network_names_the_host_and_the_prepare_command(run_script, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a loopback port with nobody listening: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    result = run_script("o3f_lapo.py", "--env-id", "kitchen-mixed-v0")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "ImportError" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: no network: could not reach 127.0.0.1")
    assert "python make_datasets.py fetch kitchen-mixed-v0" in line and "--dataset-path" in line


def test_a_corrupt_local_copy_says_so_in_one_line(hub, run_script, tmp_path):
    assert fetch_command("kitchen-mixed-v0").returncode == 0
    data = tmp_path / "store" / "D4RL" / "kitchen" / "mixed-v2" / "data" / "main_data.hdf5"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # e.g. copied by hand and cut short
    result = run_script("o3f_iql.py", "--env-id", "kitchen-mixed-v0", "--output-dir", tmp_path / "runs")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert "an incomplete or corrupt Minari dataset" in line and "make_datasets.py fetch kitchen-mixed-v0" in line


def fetch_command(*tasks):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "make_datasets.py"), "fetch", *tasks],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=dict(os.environ),
    )


def test_fetch_prepares_data_and_reports_each_failed_task_in_one_line(hub, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("O3F_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("O3F_D4RL_URL", f"http://127.0.0.1:{port}")  # D4RL's server unreachable
    result = fetch_command("kitchen-mixed-v0", "hopper-medium-v2", "kitchen-partial-v0", "kichen-mixed-v0")
    assert result.returncode == 2
    folder = tmp_path / "store" / "D4RL" / "kitchen" / "mixed-v2"
    size_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    assert result.stdout.splitlines()[0] == f"kitchen-mixed-v0: 20 transitions, {size_mb:.1f} MB in {folder}"
    assert "copy" in result.stdout.splitlines()[1] and str(tmp_path / "cache") in result.stdout.splitlines()[1]
    # One error line per failed task, in order, as it fails; then the list of what was not fetched.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    failed = ["hopper-medium-v2", "kitchen-partial-v0", "kichen-mixed-v0"]
    assert len(errors) == 3 and all(task in line for task, line in zip(failed, errors))
    assert "did you mean kitchen-mixed-v0" in errors[2] and f"127.0.0.1:{port}" in errors[0]
    assert result.stderr.splitlines()[-1] == f"not fetched: {', '.join(failed)}"
    # What fetch left is what a script on a machine with no network then reads.
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    import o3f_iql

    assert o3f_iql.read_minari("kitchen-mixed-v0")["actions"].shape == (20, 9)


def test_fetch_refuses_a_dataset_that_does_not_fit_the_environment(remote, tmp_path, monkeypatch):
    make_minari_hub_dataset(
        tmp_path / "store", "D4RL/kitchen/complete-v2", "AntMaze_UMaze-v4", {"continuing_task": True}
    )
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    result = fetch_command("kitchen-complete-v0")
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "27-d observations and 8-d actions; kitchen-complete-v0 needs 59 and 9" in line


def test_fetch_with_nothing_to_fetch_is_one_line():
    result = fetch_command()
    assert result.returncode == 2 and result.stderr.strip().startswith("error: name the tasks to fetch")


def test_the_paper_tasks_are_the_ones_the_scripts_know():
    import make_datasets
    import o3f_iql

    assert len(make_datasets.PAPER_TASKS) == 12 and set(make_datasets.PAPER_TASKS) <= set(o3f_iql.TASKS)
