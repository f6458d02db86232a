# OHIF's prebuilt viewer, from the npm registry: the checksum pins the exact package (as ./run does).
FROM node:20-bookworm-slim AS viewer
ARG OHIF_VERSION=3.13.2
ARG OHIF_SHA256=b189d3963bfc58e9394a9db8c7be75d07beb029ec211dbb126d47b62969dd3f1
WORKDIR /ohif
RUN npm pack --silent "@ohif/app@${OHIF_VERSION}" \
 && echo "${OHIF_SHA256}  ohif-app-${OHIF_VERSION}.tgz" | sha256sum -c - \
 && mkdir dist \
 && tar xzf "ohif-app-${OHIF_VERSION}.tgz" -C dist --strip-components=2 package/dist \
 && rm "ohif-app-${OHIF_VERSION}.tgz"

# The node's image: Debian 12 with Python 3.11, as on the machines the project is tested on.
FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc ca-certificates tini tzdata \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/uronode
COPY pyproject.toml README.md ./
COPY uronode uronode
COPY scp scp
COPY inference inference
COPY lab lab
COPY dicomweb dicomweb
COPY models models
# With the distributed extra (Dramatiq and its Redis client): the same image runs the node with either queue
# backend and `uronode worker` (docker-compose.distributed.yml, deploy/kubernetes).
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir '.[distributed]' \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps tf-keras==2.21.0
COPY --from=viewer /ohif/dist /opt/uronode/viewer
# The wheel carries the models too; the image names its folders so that a mounted volume can replace them.
ENV PATH=/opt/venv/bin:$PATH \
    URONODE_STORAGE__DATA_DIR=/var/lib/uronode \
    URONODE_INFERENCE__MODELS_DIR=/opt/uronode/models \
    URONODE_DICOMWEB__VIEWER_DIR=/opt/uronode/viewer
VOLUME /var/lib/uronode
EXPOSE 11112 8080
# tini as PID 1 reaps what the node's processes leave (probe 24 #5: after a node killed by the kernel's OOM killer
# its receivers and worker stayed zombies under an init that does not reap) and passes SIGTERM on to the node;
# compose's and Kubernetes' commands replace CMD, not this.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["uronode", "serve"]
