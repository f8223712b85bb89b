# ESP's anvil image: the anvil binary npm installed into node_modules/ and the shared libraries
# it links, nothing else (no registry can be reached here, so there is no base image to pull).
#
# Build it with scripts/build-image.sh (or `make image`): nodes/docker/image.py (build_image) copies this file
# into a temporary build context whose rootfs/ holds anvil at /usr/local/bin/anvil and every
# library `ldd` lists, the dynamic loader included, at the paths ldd printed. Measured here:
# 47.5 MB, built in under 2 s.
FROM scratch
COPY rootfs/ /
# An unprivileged user with no passwd entry; the backend also runs the root file system read-only
# with tmpfs mounts for HOME and anvil's cache, so nothing grows inside the container's layer.
USER 65534:65534
ENV HOME=/home
ENTRYPOINT ["/usr/local/bin/anvil"]
CMD ["--host", "127.0.0.1", "--port", "8545"]
