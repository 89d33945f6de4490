"""The secured local stack's principals: a SCRAM login per component (`pipeline.kafka.roles`), made by
the stack's admin at `stack up --secure` with exactly the ACLs of its role, and an env file per role
that a component's shell sources. Passwords are random, made once, kept in the state folder (mode
600) and never on a command line. Granting again is harmless: the logins are upserted and the ACLs
are created as they already are."""

from __future__ import annotations

from pathlib import Path

from pipeline.kafka import ensure_topics
from pipeline.kafka.roles import ROLES, Grant, grants, username
from pipeline.kafka.security import confluent_security
from pipeline.settings import Settings
from pipeline.tools.broker import StackError, kept_secret, write_client_env, write_env_file

SCRAM_ITERATIONS = 8192  # Kafka's default for SCRAM-SHA-512 credentials


def role_settings(settings: Settings, role: str, password: str | None = None) -> Settings:
    """The admin's secured settings with `role`'s login instead: what that component connects with.
    Its password is `password`, else the one the stack keeps for it."""
    from pydantic import SecretStr

    password = password or kept_secret(settings.state_dir / "tls" / f"{role}-password")
    login = {"kafka_sasl_username": username(role), "kafka_sasl_password": SecretStr(password)}
    return settings.model_copy(update=login)


def grant_roles(settings: Settings, passwords: dict[str, str] | None = None) -> dict[str, Path]:
    """As the admin (`settings`): create the topics, each role's login and its ACLs; {role: its env
    file}. With `passwords` ({role: password}, docker compose's from its .env) the logins get those,
    and no env file is written: each container is given its own login by compose."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    ensure_topics(settings)  # only the admin may create them
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers, **confluent_security(settings)})
    mechanism = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    as_role = {role: role_settings(settings, role, (passwords or {}).get(role)) for role in ROLES}
    logins = [
        UserScramCredentialUpsertion(username(role), mechanism, s.kafka_sasl_password.get_secret_value().encode())
        for role, s in as_role.items()
    ]

    def binding(g: Grant) -> AclBinding:
        resource = {
            "topic": ResourceType.TOPIC,
            "group": ResourceType.GROUP,
            "transactional_id": ResourceType.TRANSACTIONAL_ID,
        }[g.resource]
        operation = {"read": AclOperation.READ, "write": AclOperation.WRITE}[g.operation]
        principal = f"User:{username(g.role)}"
        allow = AclPermissionType.ALLOW
        pattern = ResourcePatternType.PREFIXED if g.prefixed else ResourcePatternType.LITERAL
        return AclBinding(resource, g.name, pattern, principal, "*", operation, allow)

    try:
        for future in [*admin.alter_user_scram_credentials(logins).values(), *admin.create_acls(
            [binding(g) for g in grants(settings)]
        ).values()]:  # fmt: skip
            future.result(timeout=60)
    except Exception as e:
        raise StackError(f"could not grant the components their Kafka logins and ACLs: {e}") from e
    if passwords is not None:
        return {}
    return {role: write_client_env(s, f"{role}.env") for role, s in as_role.items()}


# MLflow's users per app, on a server with its basic-auth app (SENSORCAST_MLFLOW_AUTH): (resource, which,
# permission). The producer has no MLflow login at all; every other login reads what the server's
# default permission (READ) shows, and changes only what is granted here: moving @champion takes EDIT
# on the registered model, which only the retrain flow has.
MLFLOW_RIGHTS = {
    "service": [("registered_model", "model", "READ")],
    "monitor": [("registered_model", "model", "READ"), ("experiment", "sensorcast-monitor", "EDIT")],
    "retrain": [("registered_model", "model", "MANAGE"), ("experiment", "sensorcast-retrain", "EDIT")],
}


def mlflow_login(settings: Settings, role: str, password: str | None = None) -> dict[str, str]:
    """The MLflow client environment of `role`'s own user (made by `grant_mlflow_users`): `password`,
    else the one the stack keeps for it."""
    password = password or kept_secret(settings.state_dir / "mlflow" / f"{role}-password")
    return {"MLFLOW_TRACKING_USERNAME": username(role), "MLFLOW_TRACKING_PASSWORD": password}


def grant_mlflow_users(settings: Settings, passwords: dict[str, str] | None = None) -> dict[str, Path]:
    """As MLflow's admin (the environment's login): the registered model and the experiments, a user
    per app with only its rights (MLFLOW_RIGHTS); {role: its env file, mode 600}. Again is harmless.
    With `passwords` ({role: password}, compose's) the users get those, and no env file is written."""
    from mlflow import MlflowClient
    from mlflow.exceptions import RestException
    from mlflow.server import get_app_client

    auth, client = get_app_client("basic-auth", tracking_uri=settings.tracking_uri), MlflowClient(settings.tracking_uri)

    def exists_already(call, *args) -> None:
        try:
            call(*args)
        except RestException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    exists_already(client.create_registered_model, settings.model_name)
    ids = {"model": settings.model_name}
    for rights in MLFLOW_RIGHTS.values():
        for resource, which, _ in rights:
            if resource == "experiment" and which not in ids:
                found = client.get_experiment_by_name(which)
                ids[which] = found.experiment_id if found else client.create_experiment(which)
    files = {}
    for role, rights in MLFLOW_RIGHTS.items():
        login = mlflow_login(settings, role, (passwords or {}).get(role))
        try:
            auth.create_user(login["MLFLOW_TRACKING_USERNAME"], login["MLFLOW_TRACKING_PASSWORD"])
        except RestException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            auth.update_user_password(login["MLFLOW_TRACKING_USERNAME"], login["MLFLOW_TRACKING_PASSWORD"])
        for resource, which, permission in rights:
            exists_already(auth.grant_user_permission, username(role), resource, ids[which], permission)
        if passwords is None:
            files[role] = settings.state_dir / "mlflow" / f"{role}.env"
            write_env_file(files[role], login)
    return files
