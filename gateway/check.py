"""``colpo-gateway check``: judge image files with the service's judge, as many at once as the service's workers
(so concurrent photos share the backend's batcher, as in the service), the results in input order."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the device simulator uses image_files without loading the judge
    from gateway.judge import Judge, Judged

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def image_files(folder: Path) -> list[Path]:
    """The JPEG and PNG files directly in ``folder``, by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a folder stands for its image files."""
    return [f for p in paths for f in (image_files(p) if p.is_dir() else [p])]


def judge_files(judge: Judge, paths: list[Path], workers: int) -> Iterator[tuple[Path, Judged | OSError]]:
    """Each file's judgement (or why it could not be read), in input order; ``workers`` files are judged at a
    time, and at most twice as many results wait for an earlier file."""

    from gateway.judge import PhotoRequest

    def one(path: Path) -> Judged | OSError:
        try:
            payload = path.read_bytes()
        except OSError as exc:
            return exc
        return judge.judge(PhotoRequest("local", "local", path.name, payload, in_run=False))

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check") as pool:
        window: deque[tuple[Path, Future[Judged | OSError]]] = deque()
        for path in paths:
            window.append((path, pool.submit(one, path)))
            if len(window) >= 2 * workers:
                done, future = window.popleft()
                yield done, future.result()
        while window:
            done, future = window.popleft()
            yield done, future.result()


def annotation_names(paths: list[Path]) -> list[str]:
    """A distinct ``<stem>.jpg`` per file, in input order: same-named files from different folders get ``-2``,
    ``-3``... rather than overwriting each other."""
    taken: set[str] = set()
    names = []
    for path in paths:
        name, n = f"{path.stem}.jpg", 1
        while name in taken:
            n += 1
            name = f"{path.stem}-{n}.jpg"
        taken.add(name)
        names.append(name)
    return names
