"""The ``docker`` backend: each node an anvil container, run and measured through the ``docker`` SDK.

Containers use host networking on loopback ports (bridge addresses are private-range, and ESP
only talks to 127.0.0.0/8), a memory and CPU limit, a read-only root file system and tmpfs mounts
for anvil's cache and HOME (anvil wrote 200-450 MB into a container's layer after ~6,000 blocks
here). The image is built locally, ``FROM scratch``.

The package, one job per module:

- ``backend``: :class:`~nodes.docker.backend.DockerBackend`, containers started, stopped, restarted.
- ``stats``: their CPU and memory, sampled from cgroup files or, failing that, the engine.
- ``cgroups``: finding and reading a process's cgroup counters (v1 and v2).
- ``image``: the anvil image, built from the local binary and the libraries it links.
- ``engine``: finding the container engine and connecting to it with bounded calls.
- ``compose``: the generator of compose/devnet.yml.
- ``__main__``: ``python -m nodes.docker build-image|compose-devnet``.
"""
