"""Images on one Docker host: pull (streamed, with progress and a deadline) or build as the
pull policy says, local and registry digests, and what pruning needs.

Called by `engine.host.engine.Engine`; the runtime's image work and tag follower use these.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.auth
import docker.errors
from docker.utils import parse_repository_tag

from reconciler.core.actions import EnsureImage
from reconciler.core.desired import LABEL_BUILD_HASH, BuildSpec
from reconciler.core.image_policy import Published
from reconciler.engine import registry
from reconciler.engine.client import Transfers, docker_errors
from reconciler.errors import ActionFailed

STALL_TIMEOUT_S = 60.0  # a pull or build that sends nothing for this long is cut off


def build_kwargs(build: BuildSpec, image: str) -> dict[str, Any]:
    """docker-py's `APIClient.build` arguments of a BuildSpec (the classic build API: args,
    target, shm size, labels, cache_from); the image carries LABEL_BUILD_HASH when the
    definition sets more than context and dockerfile, so a changed one is rebuilt."""
    labels = dict(build.labels)
    if build.digest:
        labels[LABEL_BUILD_HASH] = build.digest
    optional = {
        "buildargs": dict(build.args) or None,
        "target": build.target,
        "shmsize": build.shm_size,
        "labels": labels or None,
        "cache_from": list(build.cache_from) or None,
    }
    return {
        "path": build.context,
        "dockerfile": build.dockerfile,
        "tag": image,
        "rm": True,
        "decode": True,
        "timeout": STALL_TIMEOUT_S,
        **{k: v for k, v in optional.items() if v is not None},
    }


@contextlib.contextmanager
def dockerfile_for(build: BuildSpec) -> Iterator[str]:
    """The `dockerfile` argument of a build: the file named, or `dockerfile_inline`'s text
    in a temporary file (outside the context: docker-py sends it inside the context's tar)."""
    if build.dockerfile_inline is None:
        yield build.dockerfile
        return
    with tempfile.TemporaryDirectory(prefix="reconciler-dockerfile-") as folder:
        path = Path(folder) / "Dockerfile"
        path.write_text(build.dockerfile_inline)
        yield str(path)


class Images:
    """Pulls, builds and inspects images; `call` is told each operation that changes one."""

    def __init__(self, api: docker.APIClient, call: Callable[[str], None]) -> None:
        self.api = api
        self._call = call
        self.transfers = Transfers()
        self._credentials = registry.Credentials(api)
        self.registry = registry.for_api(api, self._credentials.reload)

    def present(self, image: str) -> bool:
        try:
            with docker_errors(f"inspect image {image}"):
                self.api.inspect_image(image)
            return True
        except ActionFailed as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return False
            raise

    def local_digest(self, image: str) -> str | None:
        """The registry digest the local `image` (a tag) was pulled or pushed as; None when
        the image is absent or never came from a registry."""
        try:
            with docker_errors(f"inspect image {image}"):
                info = self.api.inspect_image(image)
        except ActionFailed as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return None
            raise
        repo, _ = parse_repository_tag(image.partition("@")[0])
        digests = [str(d).partition("@") for d in info.get("RepoDigests") or []]
        mine = [dg for name, _, dg in digests if name == repo] or [dg for _, _, dg in digests]
        return mine[0] if mine else None

    def registry_digest(self, image: str) -> str:
        """The digest the registry gives `image` (a tag) now, with the credentials a pull would
        use, without pulling a layer (the engine's distribution inspect: one manifest HEAD)."""
        self.reload_credentials()
        with docker_errors(f"ask the registry for {image}"):
            self._call("distribution_inspect")
            found = self.api.inspect_distribution(image)
        return str((found.get("Descriptor") or {}).get("digest") or "")

    def registry_tags(self, image: str) -> list[str]:
        """Every tag of `image`'s repository in its registry (the pull's credentials)."""
        self._call("registry_tags")
        return self.registry.tags(image)

    def published(self, image: str, tag: str) -> Published:
        """`tag` of `image`'s repository in the registry: its digest and creation time."""
        self._call("registry_manifest")
        return self.registry.published(image, tag)

    def image_id(self, image: str) -> str | None:
        try:
            with docker_errors(f"inspect image {image}"):
                return str(self.api.inspect_image(image)["Id"])
        except ActionFailed as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return None
            raise

    def in_use(self) -> set[str]:
        """IDs of the images any container on the engine (anyone's) was created from."""
        with docker_errors("list containers"):
            return {str(c.get("ImageID")) for c in self.api.containers(all=True)}

    def remove(self, image_id: str) -> bool:
        """Remove an unused image (never forced: one a container uses, or tagged by several
        names, stays); False when Docker refused."""
        try:
            with docker_errors(f"remove image {image_id[:19]}"):
                self._call("image_remove")
                self.api.remove_image(image_id)
            return True
        except ActionFailed as exc:
            return isinstance(exc.__cause__, docker.errors.NotFound)

    def ensure(
        self,
        action: EnsureImage,
        *,
        timeout_s: float,
        progress: Callable[[str], None] = lambda line: None,
    ) -> None:
        """Pull or build as the pull policy says, within `timeout_s` (a stalled or slow
        transfer is cut off, not waited for); `progress` gets a line every few seconds."""
        what = f"image {action.image} for {action.service}"
        if action.build is not None:
            if action.pull != "always" and self.built_by(action):
                return  # present, and built from this definition
            self.build(action, what, timeout_s, progress)
            return
        present = self.present(action.image)
        if action.pull == "never" or (present and action.pull == "missing"):
            if not present:
                raise ActionFailed(f"{what}: not present and pull policy is never")
            return
        self.pull(action.image, what, timeout_s, progress)
        if not self.present(action.image):
            raise ActionFailed(f"pull {what}: the pull finished but the image is not present")

    def pull(
        self, image: str, what: str, timeout_s: float, progress: Callable[[str], None]
    ) -> None:
        """Pull `image` with the current credentials, reporting MB done every few seconds."""
        repo, tag = parse_repository_tag(image)
        registry, _ = docker.auth.resolve_repository_name(repo)
        self.reload_credentials()
        headers = {}
        header = docker.auth.get_config_header(self.api, registry)
        if header:
            headers["X-Registry-Auth"] = header
        with (
            docker_errors(f"pull {what}"),
            self.transfers.deadline(timeout_s, f"pull {what}") as watch,
        ):
            self._call("image_pull")
            # docker-py's pull() streams without any timeout: post it ourselves so a stalled
            # transfer ends (read timeout) and a slow one is closed at the deadline.
            response = self.api._post(
                self.api._url("/images/create"),
                params={"fromImage": repo, "tag": tag or "latest"},
                headers=headers,
                stream=True,
                timeout=(10, STALL_TIMEOUT_S),
            )
            watch.attach(response)
            self.api._raise_for_status(response)
            layers: dict[str, tuple[int, int]] = {}
            for chunk in self.api._stream_helper(response, decode=True):
                if "error" in chunk:
                    raise ActionFailed(f"pull {what}: {str(chunk['error']).strip()}")
                detail = chunk.get("progressDetail") or {}
                if chunk.get("id") and detail.get("total"):
                    layers[chunk["id"]] = (int(detail.get("current", 0)), int(detail["total"]))
                if watch.due_for_progress():
                    done = sum(c for c, _ in layers.values()) / 1e6
                    total = sum(t for _, t in layers.values()) / 1e6
                    progress(f"{done:.1f} of {total:.1f} MB")

    def reload_credentials(self) -> None:
        """docker-py reads $DOCKER_CONFIG/config.json (or ~/.docker/config.json) once: read it
        again when it changed (a `docker login` since), so a pull uses the current login."""
        self._credentials.reload()

    def built_by(self, action: EnsureImage) -> bool | None:
        """Whether the local image was built from this build definition (its
        LABEL_BUILD_HASH; an image without one counts as "", what a definition of context
        and dockerfile alone gives); None when the image is absent."""
        assert action.build is not None
        try:
            with docker_errors(f"inspect image {action.image}"):
                info = self.api.inspect_image(action.image)
        except ActionFailed as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return None
            raise
        labels = (info.get("Config") or {}).get("Labels") or {}
        return str(labels.get(LABEL_BUILD_HASH, "")) == action.build.digest

    def build(
        self, action: EnsureImage, what: str, timeout_s: float, progress: Callable[[str], None]
    ) -> None:
        """Build `action.image` from its context, reporting each `Step` every few seconds."""
        assert action.build is not None
        with (
            docker_errors(f"build {what}"),
            self.transfers.deadline(timeout_s, f"build {what}") as watch,
            contextlib.ExitStack() as stack,
        ):
            self._call("image_build")
            kwargs = build_kwargs(action.build, action.image)
            kwargs["dockerfile"] = stack.enter_context(dockerfile_for(action.build))
            for chunk in self.api.build(**kwargs):
                if "error" in chunk:
                    raise ActionFailed(f"build {what}: {chunk['error'].strip()}")
                watch.check()
                line = str(chunk.get("stream") or "").strip()
                if line.startswith("Step ") and watch.due_for_progress():
                    progress(line)
