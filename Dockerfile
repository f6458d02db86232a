# The node's image: Debian 12 with Python 3.11, as on the machines the project is tested on.
FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/uronode
COPY pyproject.toml README.md ./
COPY uronode uronode
COPY scp scp
COPY inference inference
COPY dicomweb dicomweb
COPY models models
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir . \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps tf-keras==2.21.0
ENV PATH=/opt/venv/bin:$PATH \
    URONODE_STORAGE__DATA_DIR=/var/lib/uronode
VOLUME /var/lib/uronode
EXPOSE 11112 8080
CMD ["uronode", "serve"]
