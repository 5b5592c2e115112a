"""A hostile corpus, generated here, through probe / analyze_video / VideoEditor / the CLI.

Each input is refused with a typed ``InvalidMediaError`` naming the file, or processed safely.
The jobs run in a child Python process with an audit hook (``sys.addaudithook``) that records
every ``subprocess.Popen``, ``os.system``, ``os.exec`` and ``os.posix_spawn`` event, so the
test can check that no command ever went through a shell; the whole folder tree is
snapshotted before and after, so nothing may appear but the named outputs of accepted jobs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(180)

CHILD = textwrap.dedent(
    r"""
    import json, os, sys
    events = []

    def audit(event, args):
        if event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                     "os.startfile"):
            events.append([event, repr(args)[:2000]])

    sys.addaudithook(audit)

    from montage.cli.app import run as cli_run
    from montage.errors import InvalidMediaError, MontageError
    from montage.ffmpeg.probe import probe
    from montage.video.analysis import analyze_video
    from montage.video.editor import VideoEditor
    from montage.video.segments import VideoSegment

    corpus, out_dir = json.loads(sys.argv[1]), sys.argv[2]

    def attempt(fn):
        try:
            fn()
            return {"ok": True}
        except Exception as error:
            return {"ok": False, "types": [c.__name__ for c in type(error).__mro__],
                    "message": str(error)}

    results = {}
    for key, path in corpus.items():
        out = os.path.join(out_dir, f"{key}.mp4")
        cli_out = os.path.join(out_dir, f"{key}-cli.mp4")
        results[key] = {
            "probe": attempt(lambda: probe(path)),
            "analyze": attempt(lambda: analyze_video(path)),
            "editor": attempt(lambda: VideoEditor().extract_and_concatenate_efficient(
                path, [VideoSegment(0.0, 1.0, path)], out)),
            "cli_probe": {"code": cli_run(["-q", "probe", "--json", path])},
            "cli_extract": {"code": cli_run(
                ["-q", "extract", path, "-s", "0-1", "-o", cli_out, "--json"])},
        }
    print("\nRESULT " + json.dumps({"results": results, "events": events}))
    """
)

PLAYLISTS = {
    "hls_passwd": "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n"
    "#EXT-X-ENDLIST\n",
    "hls_http": "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/x.ts\n"
    "#EXT-X-ENDLIST\n",
    "concat_passwd": "ffconcat version 1.0\nfile '/etc/passwd'\n",
    "concat_http": "ffconcat version 1.0\nfile 'http://127.0.0.1:9/x.mp4'\n",
    "concat_plain": "file '/etc/passwd'\n",
}
VALID_NAMES = {
    "name_newline": "new\nline.mp4",
    "name_quote": 'it\'s "quoted".mp4',
    "name_dash": "-y.mp4",
    "name_unicode": "vidéo 日本語 🎬.mp4",
}


def _y4m_absurd() -> bytes:
    """A raw YUV4MPEG2 stream declaring 100000x100000 (a 15 GB frame) with a few bytes of data."""
    return b"YUV4MPEG2 W100000 H100000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(4096)


def _build_corpus(clip: Path, folder: Path, ffmpeg_exe: str) -> dict[str, str]:
    corpus: dict[str, str] = {}
    for key, text in PLAYLISTS.items():
        for suffix in (".m3u8" if key.startswith("hls") else ".ffconcat", ".mp4"):
            path = folder / f"{key}{suffix}"
            path.write_text(text)
            corpus[f"{key}{suffix.replace('.', '_')}"] = str(path)
    for key, name in VALID_NAMES.items():
        shutil.copy(clip, folder / name)
        corpus[key] = str(folder / name)
    notes = folder / "notes.txt"
    notes.write_text("not a video\n" * 100)
    (folder / "link.mp4").symlink_to(notes)
    corpus["symlink_to_text"] = str(folder / "link.mp4")
    (folder / "passwd-link.mp4").symlink_to("/etc/passwd")
    corpus["symlink_to_passwd"] = str(folder / "passwd-link.mp4")
    (folder / "empty.mp4").write_bytes(b"")
    corpus["zero_bytes"] = str(folder / "empty.mp4")
    data = clip.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    corpus["truncated"] = str(folder / "truncated.mp4")
    (folder / "random.mp4").write_bytes(os.urandom(200_000))
    corpus["random_bytes"] = str(folder / "random.mp4")
    png = folder / "image.png"
    subprocess.run(
        [ffmpeg_exe, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240", "-frames:v",
         "1", str(png)],
        check=True,
    )  # fmt: skip
    png.rename(folder / "image.mp4")
    corpus["png_named_mp4"] = str(folder / "image.mp4")
    (folder / "huge.y4m").write_bytes(_y4m_absurd())
    corpus["absurd_dimensions_y4m"] = str(folder / "huge.y4m")
    shutil.copy(folder / "huge.y4m", folder / "huge.mp4")
    corpus["absurd_dimensions_as_mp4"] = str(folder / "huge.mp4")
    return corpus


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def outcome(
    tmp_path_factory: pytest.TempPathFactory, make_clip: Any, ffmpeg_exe: str
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hostile")
    corpus_dir, out_dir, temp = root / "corpus", root / "out", root / "tmp"
    for folder in (corpus_dir, out_dir, temp):
        folder.mkdir()
    clip = Path(make_clip(duration=2.0, audio=True))
    corpus = _build_corpus(clip, corpus_dir, ffmpeg_exe)
    before = _tree(root)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(corpus), str(out_dir)],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=root,
        env={**os.environ, "TMPDIR": str(temp), "COLUMNS": "120"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    data: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    data.update(corpus=corpus, root=root, before=before, after=_tree(root), stderr=result.stderr)
    return data


def _refused_or_ok(entry: dict[str, Any], path: str) -> None:
    for api in ("probe", "analyze", "editor"):
        got = entry[api]
        if got["ok"]:
            continue
        assert "InvalidMediaError" in got["types"], (api, got)
        assert os.path.basename(path) in got["message"], (api, got["message"])
    for cmd in ("cli_probe", "cli_extract"):
        assert entry[cmd]["code"] in (0, 2), (cmd, entry[cmd])


PLAYLIST_KEYS = [
    f"{key}{suffix}"
    for key in PLAYLISTS
    for suffix in ("_m3u8" if key.startswith("hls") else "_ffconcat", "_mp4")
]


@pytest.mark.parametrize("key", PLAYLIST_KEYS)
def test_playlists_are_refused_as_untrusted(outcome: dict[str, Any], key: str) -> None:
    entry = outcome["results"][key]
    for api in ("probe", "analyze", "editor"):
        assert entry[api]["ok"] is False, (api, "a playlist was processed")
        assert "UntrustedInputError" in entry[api]["types"], entry[api]
        assert os.path.basename(outcome["corpus"][key]) in entry[api]["message"]
    assert entry["cli_probe"]["code"] == 2
    assert entry["cli_extract"]["code"] == 2


@pytest.mark.parametrize("key", list(VALID_NAMES))
def test_awkward_names_are_processed_as_files(outcome: dict[str, Any], key: str) -> None:
    entry = outcome["results"][key]
    for api in ("probe", "analyze", "editor"):
        assert entry[api]["ok"] is True, (api, entry[api])
    assert entry["cli_probe"]["code"] == 0
    assert entry["cli_extract"]["code"] == 0
    assert (outcome["root"] / "out" / f"{key}.mp4").is_file()


REFUSED = {
    "symlink_to_text": "NotMediaError",
    "symlink_to_passwd": "NotMediaError",
    "zero_bytes": "EmptyMediaError",
    "truncated": "CorruptMediaError",
    "random_bytes": "NotMediaError",
}


@pytest.mark.parametrize(("key", "error"), sorted(REFUSED.items()))
def test_broken_and_fake_media_are_refused_with_a_typed_error(
    outcome: dict[str, Any], key: str, error: str
) -> None:
    entry = outcome["results"][key]
    for api in ("probe", "analyze", "editor"):
        assert entry[api]["ok"] is False, (api, "processed")
        assert error in entry[api]["types"], entry[api]
    _refused_or_ok(entry, outcome["corpus"][key])
    assert entry["cli_probe"]["code"] == 2
    assert entry["cli_extract"]["code"] == 2


@pytest.mark.parametrize(
    "key", ["png_named_mp4", "absurd_dimensions_y4m", "absurd_dimensions_as_mp4"]
)
def test_images_and_absurd_dimensions_are_refused_or_safe(
    outcome: dict[str, Any], key: str
) -> None:
    entry = outcome["results"][key]
    _refused_or_ok(entry, outcome["corpus"][key])
    what = "a 100000x100000 stream" if key.startswith("absurd") else "a still image"
    for api in ("analyze", "editor"):
        assert entry[api]["ok"] is False, f"{api} 'processed' {what}"
        assert "NotMediaError" in entry[api]["types"], entry[api]
    assert entry["cli_extract"]["code"] == 2


def test_no_command_ever_ran_through_a_shell(outcome: dict[str, Any]) -> None:
    events = outcome["events"]
    popens = [args for event, args in events if event == "subprocess.Popen"]
    assert popens, "the audit hook saw no subprocess at all: it was not working"
    assert [e for e, _ in events if e in ("os.system", "os.spawn", "os.startfile")] == []
    for args in popens:
        assert "'/bin/sh'" not in args and "'sh'" not in args, args
        assert "'-c'" not in args.split("[", 2)[-1][:40], args
    assert all("ffmpeg" in args for args in popens), popens


def test_nothing_written_outside_the_named_outputs(outcome: dict[str, Any]) -> None:
    new = outcome["after"] - outcome["before"]
    allowed = {"tmp"} | {
        f"out/{key}{tag}.mp4"
        for key, entry in outcome["results"].items()
        for tag, ok in (("", entry["editor"]["ok"]), ("-cli", entry["cli_extract"]["code"] == 0))
        if ok
    }
    temp_dirs = {p for p in new if p.startswith("tmp/") and (outcome["root"] / p).is_dir()}
    assert new - allowed - temp_dirs == set()
    assert outcome["before"] - outcome["after"] == set(), "an input was removed"
