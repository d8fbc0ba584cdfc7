"""The peer of `cargo xtask bench launch`: the same launch with the SageMaker
Python SDK, `Estimator(...).fit(wait=False)`, against the same emulator.
Arguments: image role output_path config_uri job_name...; more than one
job name is a sweep launched in a loop, one point per name (its learning
rate a hyperparameter). boto3 honours AWS_ENDPOINT_URL, so every client goes
to the emulator."""
import sys

import boto3
import sagemaker
from sagemaker.estimator import Estimator

image, role, output, config = sys.argv[1:5]
jobs = sys.argv[5:]
session = sagemaker.Session(boto_session=boto3.Session(region_name="us-west-2"))
estimator = Estimator(
    image_uri=image,
    role=role,
    instance_count=1,
    instance_type="ml.m5.xlarge",
    volume_size=30,
    max_run=3600,
    output_path=output,
    sagemaker_session=session,
    hyperparameters={"experiment_sha256": "0" * 64},
    metric_definitions=[{"Name": "val:iou", "Regex": "split=val .*iou=([0-9.eE+-]+)"}],
    tags=[{"Key": "sca:experiment", "Value": "bench"}],
)
for i, job in enumerate(jobs):
    if len(jobs) > 1:
        estimator.set_hyperparameters(experiment_sha256="0" * 64, learning_rate=str(1e-3 * (i + 1)))
    estimator.fit({"config": config}, wait=False, logs=False, job_name=job)
