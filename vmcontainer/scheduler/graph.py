"""Task graphs: ``requires`` (prerequisites whose results feed a task) and ``then``
(follow-up tasks fed with its result).  Checked at install, so a call never
discovers a missing link or a cycle at run time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from ..errors import VmError


class TaskGraphError(VmError):
    """A task graph is invalid: a missing task, a cycle, or removing a task others need."""


def check_graph(
    name: str,
    requires: Sequence[str],
    then: Sequence[str],
    edges_of: Callable[[str], Iterable[str]],
    installed: Callable[[str], bool],
) -> None:
    """Refuse installing ``name`` if a linked task is missing or the graph gets a cycle.

    ``edges_of(task)`` gives the installed tasks a task links to (requires + then).
    """
    if not requires and not then:
        return  # no edges of its own: nothing to miss, no cycle through it
    for link in list(requires) + list(then):
        if link == name:
            raise TaskGraphError(f"task {name!r} cannot require or follow itself")
        if not installed(link):
            raise TaskGraphError(f"task {name!r} links to {link!r}, which is not installed")
    new_edges = set(requires) | set(then)

    def neighbours(task: str) -> Iterable[str]:
        return new_edges if task == name else edges_of(task)

    # Depth-first search for a path from any neighbour back to ``name``.
    stack = [(link, (name, link)) for link in new_edges]
    seen: set[str] = set()
    while stack:
        task, path = stack.pop()
        if task == name:
            raise TaskGraphError("task graph would have a cycle: " + " -> ".join(path))
        if task in seen:
            continue
        seen.add(task)
        stack.extend((nxt, (*path, nxt)) for nxt in neighbours(task))


def dependants(name: str, links: Mapping[str, Iterable[str]]) -> list[str]:
    """Installed tasks that link to ``name``."""
    return sorted(t for t, edges in links.items() if name in edges and t != name)
