"""Where a benchmark step's time and memory go on a CUDA device: the kernels by their own time,
the lines of crosslens that launched them, the device's idle gaps, and what is alive at a step's
memory peak. Shared by the GPU benchmarks (``gpu.py --profile``, ``--memory-peak``)."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def allocation_site(frames: list[dict]) -> str:
    """Where an allocation was made: the innermost frame in crosslens's own code, else the
    innermost frame outside torch, as ``file.py:line function``."""
    ours = [f for f in frames if "/crosslens/" in f.get("filename", "")]
    others = [f for f in frames if "/torch/" not in f.get("filename", "")]
    frame = (ours or others or frames or [{}])[0]
    return f"{frame.get('filename', '?').rsplit('/', 1)[-1]}:{frame.get('line', '?')} {frame.get('name', '?')}"


def peak_breakdown(events: list[dict], before: int, top: int = 8) -> tuple[int, list[tuple[str, int]]]:
    """The largest allocated total over a CUDA memory trace's ``events`` (``before``: the bytes
    allocated when the trace started), and what was allocated during the trace and still alive
    then: bytes per :func:`allocation_site`, largest first. Frees of blocks allocated before
    the trace count against the total too."""
    live: dict[int, tuple[int, str]] = {}
    total = peak = before
    at_peak: dict[int, tuple[int, str]] = {}
    for event in events:
        if event["action"] == "alloc":
            live[event["addr"]] = (event["size"], allocation_site(event.get("frames", [])))
            total += event["size"]
            if total > peak:
                peak, at_peak = total, dict(live)
        elif event["action"] == "free_completed":
            live.pop(event["addr"], None)
            total -= event["size"]
    sites: Counter[str] = Counter()
    for size, site in at_peak.values():
        sites[site] += size
    return peak, sites.most_common(top)


def print_memory_peak(fn: Callable[[], None], device: str, label: str) -> None:
    """One call of ``fn`` under CUDA's allocation history: its peak, what was held before it
    (parameters, Adam's state, the bfloat16 weight copies), and the allocations alive at the
    peak by the line that made them."""
    if not device.startswith("cuda"):
        return
    try:
        sync(device)
        before = torch.cuda.memory_allocated()
        torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
        fn()
        sync(device)
        events = torch.cuda.memory._snapshot()["device_traces"][torch.cuda.current_device()]
    except Exception as error:  # noqa: BLE001  the row's own figures stand without it
        print(f"memory peak of one step, {label}: not recorded ({type(error).__name__}: {error})")
        return
    finally:
        with contextlib.suppress(Exception):  # where recording never started
            torch.cuda.memory._record_memory_history(enabled=None)
    peak, sites = peak_breakdown(events, before)
    print(
        f"memory peak of one step, {label}: {peak / 2**30:.2f} GiB, {before / 2**30:.2f} of it held before the step; "
        f"alive at the peak beyond that:"
    )
    for site, size in sites:
        print(f"  {size / 2**30:7.3f} GiB  {site}")


def print_profile(fn: Callable[[], None], device: str, label: str, calls: int = 3) -> None:
    """The kernels of ``calls`` calls of ``fn`` by their own time on the device (CPU: host time);
    then the same ops split by their inputs' shapes, since one op's average over calls of every
    size says neither which calls cost nor whether a call repeats once per snapshot. On CUDA
    then, the time the device sat idle between kernels (:func:`idle_gaps`), which no kernel
    table shows; and, from ``calls`` more under Python's tracing (which slows the host, so its
    gaps are wider), the device's time by the line of crosslens that launched each kernel
    (:func:`time_by_line`) and the lines after the longest gaps."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    print(f"profile, {calls} steps: {label}")
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=20, max_name_column_width=60), flush=True)
    print(f"profile by input shapes, {calls} steps: {label}")
    by_shape = prof.key_averages(group_by_input_shape=True)
    print(by_shape.table(sort_by=sort, row_limit=25, max_name_column_width=40, max_shapes_column_width=60), flush=True)
    if not cuda:
        return
    try:  # the profiler's event API moves between torch versions: the tables above stand anyway
        print(idle_gaps(prof.events(), calls, top=4), flush=True)
        with profile(activities=activities, with_stack=True) as traced:
            for _ in range(calls):
                fn()
            sync(device)
        events = traced.events()
        sites = launch_sites(events)
        n_frames = sum(python_frame(e) and "crosslens/" in e.name for e in events)
        print(
            f"device time by the line of crosslens that launched it, per step, under Python's tracing: {label} "
            f"({n_frames} of crosslens's Python frames recorded)"
        )
        for line, ms in time_by_line(events, calls, sites):
            print(f"  {ms:7.3f} ms  {line}")
        print(idle_gaps(events, calls, sites), flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"  (no idle or line tables: {type(e).__name__}: {e})")


def python_frame(e) -> bool:
    """Whether a profiler event is a Python function's (``with_stack``): ``path(line): name``."""
    return bool(getattr(e, "is_python_function", False)) or (".py(" in e.name and "): " in e.name)


def launch_sites(events: list) -> dict[int, str]:
    """Each device kernel's launching line of crosslens: the innermost Python frame under
    ``crosslens/`` whose time on the host holds the launch (the CUDA runtime call that shares the
    kernel's correlation id), on the launching thread where that thread has frames (the autograd
    engine runs backward on its own). Triton's kernels and torch's alike; "(none)" for a launch
    outside crosslens's frames, and for kernels whose launch the profiler did not keep."""
    import bisect

    cuda = torch.autograd.DeviceType.CUDA
    kernels = [e for e in events if e.device_type == cuda]
    # the runtime's calls (cudaLaunchKernel, cuLaunchKernel, cudaMemcpyAsync, ...) share their kernel's id
    launches = {e.id: e for e in events if e.device_type != cuda and e.name.startswith("cu") and not python_frame(e)}
    by_thread: dict[object, list] = {}
    for e in events:
        if e.device_type != cuda and python_frame(e) and "crosslens/" in e.name:
            by_thread.setdefault(e.thread, []).append(e)
    by_thread[None] = [f for fs in list(by_thread.values()) for f in fs]
    frames = {thread: sorted(fs, key=lambda f: f.time_range.start) for thread, fs in by_thread.items()}
    starts = {thread: [f.time_range.start for f in fs] for thread, fs in frames.items()}

    def innermost(thread: object, t: float) -> str | None:
        """The latest-starting frame that holds ``t``: the first found looking back from ``t``."""
        fs = frames.get(thread, [])
        for i in range(bisect.bisect_right(starts.get(thread, []), t) - 1, -1, -1):
            if fs[i].time_range.end >= t:
                return fs[i].name[fs[i].name.index("crosslens/") :]
        return None

    sites = {}
    for k in kernels:
        launch = launches.get(k.id)
        if launch is None:
            sites[k.id] = "(none)"
            continue
        t = launch.time_range.start
        sites[k.id] = innermost(launch.thread, t) or innermost(None, t) or "(none)"
    return sites


def time_by_line(events: list, calls: int, sites: dict[int, str], top: int = 25) -> list[tuple[str, float]]:
    """The device's kernel time by the line of crosslens that launched it (``sites``, from
    :func:`launch_sites`): where a kernel table's ``copy_`` or ``mul`` comes from. Milliseconds per
    call, the largest first."""
    times: Counter[str] = Counter()
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            times[sites.get(e.id, "(none)")] += (e.time_range.end - e.time_range.start) / 1e3 / calls
    return times.most_common(top)


def idle_gaps(events: list, calls: int, sites: dict[int, str] | None = None, top: int = 8) -> str:
    """The device's idle time between its first and last kernel: the whole span, the time some
    kernel ran, the rest per step, and the longest gaps with the kernels either side of each and,
    given ``sites`` (:func:`launch_sites`), the line that launched the one after (a gap after a
    sync is the host catching up with the device, and that line is where it caught up)."""
    kernels = sorted(
        (e for e in events if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda e: e.time_range.start
    )
    busy, end, gaps = 0.0, kernels[0].time_range.start, []
    for before, k in zip([None, *kernels], kernels):
        start, stop = k.time_range.start, k.time_range.end
        if start > end and before is not None:
            site = "" if sites is None else f"  launched at {sites.get(k.id, '(none)')}"
            gaps.append((start - end, before.name, k.name, site))
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    span = end - kernels[0].time_range.start
    lines = [
        f"device idle: span {span / 1e3 / calls:.2f} ms per step, kernels running {busy / 1e3 / calls:.2f}, "
        f"idle {(span - busy) / 1e3 / calls:.2f} ({len(gaps) / calls:.0f} gaps per step); the longest:"
    ]
    for gap, before, after, site in sorted(gaps, reverse=True)[:top]:
        lines.append(f"  {gap / 1e3:6.3f} ms  after {before[:40]}  before {after[:40]}{site}")
    return "\n".join(lines)
