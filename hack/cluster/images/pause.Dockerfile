# Pod sandbox ("pause") image of the local cluster: containerd's sandbox_image.
# Build context: the directory hack/pause/build.sh prints (it holds the static binary `pause`).
#   buildah bud --layers -f hack/cluster/images/pause.Dockerfile \
#     -t kubetune.local/pause:1.0 "$(hack/pause/build.sh | tail -n1)"
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
