# KubeRay operator image of the local cluster (hack/cluster/manifests/kuberay-operator.yaml).
# Build context: the directory hack/kuberay/build.sh prints (it holds the static binary `manager`;
# the crds/ and rbac/ next to it are not copied).
#   buildah bud --layers -f hack/cluster/images/kuberay-operator.Dockerfile \
#     -t kubetune.local/kuberay-operator:v1.6.2 "$(hack/kuberay/build.sh | tail -n1)"
FROM scratch
COPY manager /manager
USER 65532:65532
ENTRYPOINT ["/manager"]
