# stream-monitor: the monitor and its command line, with its compiled decoder and kernels. The build stages have a
# C compiler and the Python headers and build wheels of the package and its dependencies (failing when the
# package's wheel lacks a compiled module, rather than ship the slower Python fallback); the runtime stage
# installs those wheels into a venv, without a compiler, and runs as a non-root user (uid 10001).
#   docker build -t stream-monitor .
#   docker run --rm -v $PWD/config:/etc/stream-monitor:ro -e KAFKA_BOOTSTRAP_SERVERS=broker:9092 stream-monitor
#   docker run --rm stream-monitor --version    # says whether the compiled decoder is in use
# BASE is any Debian-like image with Python 3.11+, or a plain Debian bookworm root filesystem (no registry:
# `debootstrap --variant=minbase bookworm DIR && tar -C DIR -c . | podman import - debian-base`, then
# `podman build --network=host --build-arg BASE=localhost/debian-base .`; .ci/image does this): what the base
# lacks (Python, venv, headers, compiler) comes from its apt (deploy/image/install-missing, in both stages).
ARG BASE=python:3.11-slim

FROM ${BASE} AS toolchain
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,source=deploy/image/install-missing,target=/usr/local/bin/install-missing \
    set -eu; need=""; \
    command -v python3 >/dev/null || need="$need python3"; \
    python3 -c 'import ensurepip' 2>/dev/null || need="$need python3-venv"; \
    python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
      2>/dev/null || need="$need python3-dev"; \
    command -v cc >/dev/null || need="$need gcc libc6-dev"; \
    install-missing $need; \
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || { echo "stream-monitor needs Python 3.11 or later; the base image has $(python3 -V)" >&2; exit 1; }; \
    python3 -m venv /opt/build
WORKDIR /src

# The dependencies as pyproject.toml lists them: copied from here, they change the build below only when they do.
FROM toolchain AS requirements
COPY pyproject.toml ./
RUN /opt/build/bin/python -c 'import tomllib; \
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >/requirements.txt

FROM toolchain AS build
COPY --from=requirements /requirements.txt ./
# Wheels of the dependencies first, in a layer of their own: a change to the code alone does not fetch them again.
# Behind a proxy that re-signs TLS, give pip its CA bundle as a build secret (never stored in the image):
#   docker build --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt .
RUN --mount=type=secret,id=pip-ca \
    set -eu; [ ! -s /run/secrets/pip-ca ] || export PIP_CERT=/run/secrets/pip-ca; \
    /opt/build/bin/pip wheel --quiet -r requirements.txt -w /wheels
COPY pyproject.toml README.md ./
COPY stream_monitor ./stream_monitor
# The package's wheel, with its compiled modules (those a local install left in the build context are removed
# first: they never stand in for this build's own).
RUN --mount=type=secret,id=pip-ca \
    set -eu; [ ! -s /run/secrets/pip-ca ] || export PIP_CERT=/run/secrets/pip-ca; \
    find stream_monitor -name '*.so' -delete; \
    /opt/build/bin/pip wheel --quiet --no-deps . -w /wheels; \
    /opt/build/bin/python -c 'import glob, sys, tomllib, zipfile; \
want = [e["name"] for e in tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["ext-modules"]]; \
names = zipfile.ZipFile(glob.glob("/wheels/stream_monitor-*.whl")[0]).namelist(); \
missing = [m for m in want if not any(n.startswith(m.replace(".", "/") + ".") and n.endswith(".so") for n in names)]; \
print("compiled modules in the wheel:", ", ".join(m for m in want if m not in missing)); \
sys.exit("the wheel lacks the compiled " + ", ".join(missing) + ": the C build failed (see it with `pip wheel -v .`)" if missing else 0)'; \
    cd /wheels; sha256sum *.whl >/wheels.sha256

# The runtime: the wheels installed into a venv, no compiler.
FROM ${BASE}
ENV PATH=/opt/stream-monitor/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,source=deploy/image/install-missing,target=/usr/local/bin/install-missing \
    set -eu; need=""; \
    command -v python3 >/dev/null || need="$need python3"; \
    python3 -c 'import ensurepip' 2>/dev/null || need="$need python3-venv"; \
    [ -e /etc/ssl/certs/ca-certificates.crt ] || need="$need ca-certificates"; \
    install-missing $need; \
    useradd --system --uid 10001 --home-dir /var/lib/stream-monitor --create-home monitor
# The wheels only, from the build stage, mounted rather than copied: they stay out of the image's layers. Their
# checksums are copied first: a builder that caches this RUN without looking into the mount (podman 4) still
# runs it again when the wheels changed.
COPY --from=build /wheels.sha256 /usr/share/stream-monitor/wheels.sha256
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    set -eu; python3 -m venv /opt/stream-monitor; \
    pip install --quiet --no-index --find-links /wheels stream-monitor; \
    v=$(stream-monitor --version); echo "$v"; \
    case "$v" in *"(decoder: compiled; statistics: compiled; panes: compiled)") ;; *) echo "not the compiled parts" >&2; exit 1;; esac

USER 10001
WORKDIR /var/lib/stream-monitor
COPY config/example.yaml /etc/stream-monitor/config.yaml

EXPOSE 9108
STOPSIGNAL SIGTERM
ENTRYPOINT ["stream-monitor"]
CMD ["run", "--config", "/etc/stream-monitor/config.yaml"]
