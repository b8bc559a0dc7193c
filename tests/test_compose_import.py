# ruff: noqa: E501  (the seed's lines, verbatim)
"""`reconciler import`: compose files (version 2, 3.x, none) into desired-state files."""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

from reconciler.config import loader
from reconciler.config.compose_import import import_compose
from tests.conftest import run_cli

# The seed's compose file, put together from the fragments of its document
# (/work/shared/seed/monitoring-stack-practica1.md), grafanaB and node-exporterB as their twins.
SEED = """\
version: "3"
services:
  node-exporterA:
    image: prom/node-exporter
    container_name: node-exporterA
    volumes:
      - /proc:/host/proc:ro
      - /sys:/host/sys:ro
      - /:/rootfs:ro
    command:
      - '--path.procfs=/host/proc'
      - '--path.sysfs=/host/sys'
      - '--path.rootfs=/host'
    ports:
      - 9100:9100
    networks:
      - mynetwork
    restart: always
  node-exporterB:
    image: prom/node-exporter
    container_name: node-exporterB
    volumes:
      - /proc:/host/proc:ro
      - /sys:/host/sys:ro
      - /:/rootfs:ro
    command:
      - '--path.procfs=/host/proc'
      - '--path.sysfs=/host/sys'
      - '--path.rootfs=/host'
    ports:
      - 9101:9100
    networks:
      - mynetwork
    restart: always
  prometheus:
    image: prom/prometheus:latest
    container_name: my-prometheus
    volumes:
      - ./Docker/PrometheusServer/Config/prometheus.yml:/etc/prometheus/prometheus.yml
      - ./Docker/PrometheusServer/Config/alert.yml:/etc/prometheus/alert.yml
      - prometheus_data:/prometheus
    command:
      - '--config.file=/etc/prometheus/prometheus.yml'
      - '--storage.tsdb.path=/prometheus'
      - '--web.console.libraries=/etc/prometheus/console_libraries'
      - '--web.console.templates=/etc/prometheus/consoles'
      - '--web.enable-lifecycle'
      - '--storage.tsdb.retention.time=7d'
    ports:
      - 9090:9090
    networks:
      - mynetwork

    restart: always
  grafanaA:
    image: grafana/grafana-enterprise:8.2.0
    container_name: grafanaA
    user: "104"
    depends_on:
      - prometheus
    ports:
      - 3000:3000
    volumes:
      - ./Docker/Grafana/provisioning/datasource/datasource.yml:/etc/grafana/provisioning/datasource/datasource.yml
      - ./Docker/Grafana/provisioning/dashboards/dashboard.yml:/etc/grafana/provisioning/dashboards/dashboard.yml
      - ./Docker/Grafana/provisioning/dashboards/prometheus.json:/etc/grafana/provisioning/dashboards/prometheus.json
      - grafana_data:/var/lib/grafana
    networks:
      - mynetwork
    restart: always
  grafanaB:
    image: grafana/grafana-enterprise:8.2.0
    container_name: grafanaB
    user: "104"
    depends_on:
      - prometheus
    ports:
      - 3001:3000
    volumes:
      - grafana_data:/var/lib/grafana
    networks:
      - mynetwork
    restart: always
  haproxy:
    image: haproxy:latest
    container_name: haproxy
    depends_on:
      - grafanaA
      - grafanaB
    ports:
      - 8000:80
      - 8404:8404
    volumes:
      - ./Docker/HAProxy:/usr/local/etc/haproxy:ro
    networks:
      - mynetwork
    restart: always
networks:
  mynetwork:
     driver: bridge
volumes:
  prometheus_data: {}
  grafana_data: {}
"""


def _write(folder: Path, text: str, name: str = "docker-compose.yml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_the_seed_compose_file_imports_and_validates(tmp_path: Path) -> None:
    """The seed's file converts with nothing dropped; it validates; its volumes and network
    keep compose's names (so a compose deployment's data is adopted); relative binds point
    at the same files from the output's folder."""
    compose = _write(tmp_path / "practica1", SEED)
    out = tmp_path / "etc" / "state.yaml"
    out.parent.mkdir()
    result = run_cli("import", str(compose), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stderr and "project practica1" in result.stderr
    state = loader.load(out)
    assert state.project == "practica1"
    assert {v.name for v in state.volumes} == {
        "practica1_prometheus_data",
        "practica1_grafana_data",
    }
    assert [n.name for n in state.networks] == ["practica1_mynetwork"]
    prom = state.service("prometheus").replicas[0]
    assert prom.name == "my-prometheus"
    assert (
        f"{tmp_path}/practica1/Docker/PrometheusServer/Config/alert.yml:/etc/prometheus/alert.yml"
        in (prom.binds)
    )
    assert "practica1_prometheus_data:/prometheus" in prom.binds
    assert state.service("haproxy").depends_on == ("grafanaA", "grafanaB")
    text = out.read_text()
    assert "../practica1/Docker/HAProxy:/usr/local/etc/haproxy:ro" in text
    assert "- '--web.enable-lifecycle'" in text  # quoting kept (round trip)


def test_unsupported_keys_are_listed_with_lines_and_fail(tmp_path: Path) -> None:
    """Each key that cannot be carried is named with file:line:column and why; nothing is
    written unless --drop-unsupported, which writes the rest and warns."""
    compose = _write(
        tmp_path,
        """\
        services:
          web:
            image: nginx
            external_links: [db]
            volumes_from: [db]
            build: {context: ., secrets: [npm]}
            deploy:
              placement: {constraints: [node.role == manager]}
          db:
            image: postgres
        """,
    )
    out = tmp_path / "state.yaml"
    refused = run_cli("import", str(compose), "-o", str(out))
    assert refused.returncode == 2 and not out.exists()
    err = refused.stderr
    assert f"{compose}:4:5: services.web.external_links: not supported (legacy" in err
    assert f"{compose}:5:5: services.web.volumes_from: not supported" in err
    assert f"{compose}:6:25: services.web.build.secrets: not supported (build secrets need" in err
    assert f"{compose}:8:7: services.web.deploy.placement: not supported (Swarm" in err
    dropped = run_cli("import", str(compose), "-o", str(out), "--drop-unsupported")
    assert dropped.returncode == 0, dropped.stderr
    assert dropped.stderr.count("warning: dropped") == 4
    assert "links" not in _uncommented(out.read_text())
    assert f"# dropped {compose}:4:5: services.web.external_links: not supported" in out.read_text()
    assert "secrets" not in _uncommented(out.read_text())
    assert [s.name for s in loader.load(out).services] == ["web", "db"]


def test_version_2_external_names_default_network_and_configs(tmp_path: Path) -> None:
    """external: {name: x} (version 2/3.x) becomes name: + external:; a `default` network
    is compose's `<project>_default`; compose configs become mounted files."""
    compose = _write(
        tmp_path / "src",
        """\
        version: "2.4"
        name: shop
        services:
          web:
            image: nginx
            networks: [default, legacy]
            volumes: [data:/data, "./html:/usr/share/nginx/html:ro"]
            configs:
              - site
              - source: extra
                target: /etc/extra.conf
            env_file: [./web.env]
        networks:
          default: {driver: bridge}
          legacy:
            external:
              name: old_net
        volumes:
          data:
            external: true
        configs:
          site: {file: ./site.conf}
          extra: {file: ./extra.conf}
        """,
    )
    for name in ("site.conf", "extra.conf", "web.env"):
        (tmp_path / "src" / name).write_text("A=1\n")
    result = import_compose(compose, output_dir=tmp_path / "out")
    assert not result.unsupported
    assert result.project == "shop"
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "state.yaml"
    out.write_text(result.text)
    state = loader.load(out)
    assert {n.name: n.external for n in state.networks} == {"shop_default": False, "old_net": True}
    assert {v.name: v.external for v in state.volumes} == {"data": True}
    web = state.service("web").replicas[0]
    assert [a.network for a in web.networks] == ["shop_default", "old_net"]
    assert f"{tmp_path}/src/site.conf:/site:ro" in web.binds
    assert f"{tmp_path}/src/extra.conf:/etc/extra.conf:ro" in web.binds
    assert f"{tmp_path}/src/html:/usr/share/nginx/html:ro" in web.binds
    assert "A=1" in web.environment
    assert "configs:\n  site" not in result.text


def test_a_file_without_version_and_the_project_flag(tmp_path: Path) -> None:
    """No version key (compose spec) is fine; --project names the project and the objects."""
    compose = _write(tmp_path, "services:\n  web: {image: nginx}\nvolumes:\n  v: {}\n")
    result = import_compose(compose, output_dir=tmp_path, project="blog")
    assert result.text.startswith("version: 1\nproject: blog\n")
    assert "name: blog_v" in result.text


def test_import_raises_only_its_own_error_on_any_input(tmp_path: Path) -> None:
    """Arbitrary bytes and mutations of a compose file: an Imported or a DesiredStateError."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from reconciler.errors import DesiredStateError

    lines = SEED.splitlines()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.one_of(
            st.binary(max_size=300),
            st.lists(st.integers(0, len(lines) - 1), max_size=6).map(
                lambda drop: "\n".join(ln for i, ln in enumerate(lines) if i not in drop).encode()
            ),
            st.tuples(st.integers(0, len(SEED)), st.text(max_size=20)).map(
                lambda t: (SEED[: t[0]] + t[1] + SEED[t[0] :]).encode()
            ),
        )
    )
    def check(raw: bytes) -> None:
        path = tmp_path / "fuzz.yml"
        path.write_bytes(raw)
        with contextlib.suppress(DesiredStateError):  # anything else fails the test
            import_compose(path, output_dir=tmp_path, drop_unsupported=True)

    check()


def test_relative_secret_config_and_env_file_paths_follow_the_output(tmp_path: Path) -> None:
    """`file: pw.txt` (no leading ./) is relative to the compose file, as compose reads it:
    secrets, configs and env_file are rewritten for an output written elsewhere."""
    compose = _write(
        tmp_path / "src",
        """\
        services:
          a:
            image: busybox
            env_file: a.env
            secrets: [pw]
            configs: [conf]
          b:
            image: busybox
            env_file: {path: b.env, required: false}
        secrets:
          pw: {file: pw.txt}
        configs:
          conf: {file: conf/app.ini}
        """,
    )
    (tmp_path / "src" / "pw.txt").write_text("hunter22\n")
    (tmp_path / "src" / "a.env").write_text("A=1\n")
    (tmp_path / "src" / "conf").mkdir()
    (tmp_path / "src" / "conf" / "app.ini").write_text("x=1\n")
    out = tmp_path / "out" / "desired_state.yaml"
    out.parent.mkdir()
    result = run_cli("import", str(compose), "-o", str(out))
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "file: ../src/pw.txt" in text and "env_file: ../src/a.env" in text
    assert "path: ../src/b.env" in text
    replica = loader.load(out).service("a").replicas[0]
    assert replica.secrets[0].target == "/run/secrets/pw"
    assert "A=1" in replica.environment


def test_errors_of_the_result_point_at_the_compose_file(tmp_path: Path) -> None:
    """What the loader finds in the converted text is shown at the compose file's
    line:column (the converted text was never written), not at <stdout>'s."""
    compose = _write(
        tmp_path,
        """\
        # a comment
        services:
          a:
            image: busybox
            environment:
              X: "1"
            cpus: lots
            secrets: [pw]
        secrets:
          pw: {file: missing.txt}
        """,
    )
    result = run_cli("import", str(compose))
    assert result.returncode == 2 and not result.stdout
    assert f"{compose}:7:11: services.a.cpus: must be a number" in result.stderr
    assert "<stdout>" not in result.stderr
    out = tmp_path / "o" / "desired_state.yaml"
    out.parent.mkdir()
    compose.write_text(compose.read_text().replace("cpus: lots", "cpus: 1"))
    result = run_cli("import", str(compose), "-o", str(out))
    assert result.returncode == 2 and not out.exists()
    assert f"{compose}:8:15: services.a.secrets[0]: cannot read secret file" in result.stderr
    assert "desired_state.yaml:" not in result.stderr


def test_drop_unsupported_drops_a_secret_not_from_a_file_and_its_references(
    tmp_path: Path,
) -> None:
    """A compose secret from `environment:` (or external) cannot be carried: refused with its
    line; --drop-unsupported leaves out the secret and every reference to it."""
    compose = _write(
        tmp_path,
        """\
        services:
          a:
            image: busybox
            secrets: [envsec, {source: pw, target: /run/x}]
          b:
            image: busybox
            secrets: [{source: envsec}]
        secrets:
          pw: {file: ./pw.txt}
          envsec: {environment: HOME}
        """,
    )
    (tmp_path / "pw.txt").write_text("hunter22\n")
    out = tmp_path / "state.yaml"
    refused = run_cli("import", str(compose), "-o", str(out))
    assert refused.returncode == 2 and not out.exists()
    assert f"{compose}:10:3: secrets.envsec: not supported" in refused.stderr
    dropped = run_cli("import", str(compose), "-o", str(out), "--drop-unsupported")
    assert dropped.returncode == 0, dropped.stderr
    assert dropped.stderr.count("warning: dropped") == 3
    state = loader.load(out)
    assert [m.target for m in state.service("a").replicas[0].secrets] == ["/run/x"]
    assert state.service("b").replicas[0].secrets == ()
    assert "envsec" not in _uncommented(out.read_text())


def _uncommented(text: str) -> str:
    """The YAML without its comment lines (the import notes each dropped key in one)."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
