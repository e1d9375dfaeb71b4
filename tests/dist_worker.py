"""One process of the two-process `jax.distributed` test (run by tests/test_parallel.py).

Usage: python tests/dist_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR
Each process has 2 CPU devices; together they form one 4-device mesh. The process trains the
same data-parallel `fit` and sharded `fit_replicas` and writes what it sees to OUT_DIR.
"""

import sys
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main() -> None:
    pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=nproc, process_id=pid,
                               initialization_timeout=60)
    import numpy as np
    from tests_common import DATA_SEED, dist_case

    import jaxseq as js
    from jaxseq import parallel

    mesh = parallel.make_mesh()
    assert mesh.size == 2 * nproc, mesh
    model, x, y, fit_kw, rep_kw = dist_case(DATA_SEED)
    state, history = js.fit(model, x, y, mesh=mesh, verbose=0, **fit_kw)
    rstates, rhistory = js.fit_replicas(model, x, y, mesh=mesh, **rep_kw)
    flat = {}
    for prefix, tree in (("fit", state.params), ("rep", rstates.params)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(parallel.to_host(tree)):
            flat[prefix + jax.tree_util.keystr(path)] = leaf
    np.savez(out / f"process{pid}.npz", loss=history.loss, rloss=rhistory.loss,
             devices=np.asarray(len(jax.devices())), **flat)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
