"""R1/R3 for old (saved .so) vs new engine, alternating, same session."""
import sys, importlib.util
sys.path.insert(0, "/work/main/benchmarks")
import bench_relay as B
spec = importlib.util.spec_from_file_location("_relay", __import__("glob").glob("/tmp/writer-old/_relay.*.so")[0])
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
import speeddata._relay as new
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
names = sys.argv[2].split(",") if len(sys.argv) > 2 else ["800 B records"]
with B.big_socket_buffers():
    for arm in B.make_arms():
        if not any(arm.name.startswith(n) for n in names):
            continue
        for r in range(rounds):
            bare = B.best(lambda: B.run_bare(arm), 3)
            for label, mod in (("old", old), ("new", new)):
                B.Engine = mod.Engine
                on = B.best(lambda: B.run_relay(arm)["rate"], 3)
                off = B.best(lambda: B.run_relay(arm, cache=False)["rate"], 3)
                print(f"{arm.name:16} r{r} {label}: bare {bare:,.0f} on {on:,.0f} off {off:,.0f} R1 {on/bare:.3f} R3 {on/off:.3f}", flush=True)
