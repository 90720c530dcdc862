# CoreDNS image of the local cluster (hack/cluster/manifests/coredns.yaml).
# Build context: the directory hack/coredns/build.sh prints (it holds the static binary `coredns`).
#   buildah bud --layers -f hack/cluster/images/coredns.Dockerfile \
#     -t kubetune.local/coredns:v1.14.7 "$(hack/coredns/build.sh | tail -n1)"
FROM scratch
COPY coredns /coredns
USER 65532
EXPOSE 1053/udp 1053/tcp 8080/tcp 8181/tcp
ENTRYPOINT ["/coredns"]
