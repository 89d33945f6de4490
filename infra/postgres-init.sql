-- MLflow uses the database named by POSTGRES_DB; Prefect gets its own.
CREATE DATABASE prefect OWNER sensorcast;
