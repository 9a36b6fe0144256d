# sse-relay as one self-contained executable (the same file `make dist` builds), on a
# slim base, as a non-root user.
#   docker build -t sse-relay .
#   docker run -p 8080:8080 sse-relay --listen 0.0.0.0:8080 --upstream https://api.anthropic.com

# Build: the Cython modules need a C compiler and OpenSSL's headers (the TLS reads);
# scripts/build-dist.sh packs everything.
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY relay ./relay
COPY relay_sim ./relay_sim
COPY scripts/build-dist.sh ./scripts/
# Editable, as `make install` does: the compiled scanner lands in relay/, where
# build-dist.sh checks for it and PyInstaller collects it.
RUN python -m venv .venv \
    && .venv/bin/pip install -q --upgrade pip setuptools wheel \
    && .venv/bin/pip install -q -e . "pyinstaller>=6.10" \
    && scripts/build-dist.sh /out

# Run: the binary carries its own Python; the base only supplies glibc (and bash for
# the health check).
FROM debian:bookworm-slim
RUN useradd --system --no-create-home --shell /usr/sbin/nologin sse-relay
COPY --from=build /out/sse-relay /usr/local/bin/sse-relay
USER sse-relay
# The admin port (9901) is 127.0.0.1 unless --admin-listen says otherwise.
EXPOSE 8080
# /healthz on the admin listener (--admin-listen, default 127.0.0.1:9901), over bash's
# /dev/tcp: no HTTP client needs installing for one GET.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD bash -c 'exec 3<>/dev/tcp/127.0.0.1/9901 \
        && printf "GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n" >&3 \
        && head -n 1 <&3 | grep -q " 200 "'
ENTRYPOINT ["/usr/local/bin/sse-relay"]
# Arguments given to `docker run` replace this whole line, so they repeat --listen (an
# environment default instead would override a config file's `listen`).
CMD ["--listen", "0.0.0.0:8080"]
