"""The encoded data of a sweep's trials: one encoding per distinct `prepare.encoding_key`.

The driver encodes the base config's data before Ray starts (and that of every checkpoint the
space searches, so a model that cannot read the data is refused before any trial) and shares it
through the object store. A trial whose searched fields change the encoding (data.max_length,
data.ner.label_subwords, another checkpoint, ...) gets it from the sweep's `EncodingStore`: one
actor that encodes each distinct key once, from the files the driver read, and keeps the result
in the object store, so every trial, fold and DDP worker with that key maps the same copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sft_tune.config import RunConfig
from sft_tune.core import data as data_module
from sft_tune.core.files import RawData
from sft_tune.core.prepare import PreparedData, Splits, encode_data, encoding_key


@dataclass(frozen=True)
class SharedData:
    """What a trial needs to find the encoded data of its config (it crosses from the driver to
    the trial actors and Train workers). `encodings` maps an encoding key to its object ref
    (each inside a list, so that Ray passes the ref and not the data); `store` is the
    `EncodingStore` actor, None when the space searches no field that changes the encoding."""

    encodings: dict[str, list]
    store: Any | None = None

    def ref(self, config: RunConfig, task):
        """The object ref of the encoded data for `config`."""
        import ray

        key = encoding_key(config, task)
        if key in self.encodings:
            return self.encodings[key][0]
        if self.store is None:
            raise RuntimeError(
                f"no encoding for {key}: the space was checked to search no field that changes it"
            )
        return ray.get(self.store.encoding.remote(config.model_dump(mode="json")))[0]


class EncodingStore:
    """A Ray actor: the encodings of the configs the driver did not encode, each made once."""

    def __init__(self, raw: list, base: list, known: dict[str, list]) -> None:
        import ray

        self.raw: RawData = ray.get(raw[0])
        base_data: PreparedData = ray.get(base[0])
        self.splits = Splits(base_data.splits, base_data.strata, base_data.groups)
        self.lm = base_data.lm
        self.refs = {key: refs[0] for key, refs in known.items()}
        self.made: list[str] = []

    def encoding(self, run_config: dict[str, Any]) -> list:
        """[object ref] of the encoded data for this config, encoding it the first time its key
        is asked for (calls run one at a time: a second trial asking for the same key waits and
        gets the same ref)."""
        import ray

        from sft_tune.tasks import get_task

        config = RunConfig.model_validate(run_config)
        task = get_task(config.model.task)
        key = encoding_key(config, task)
        if key not in self.refs:
            self.refs[key] = ray.put(encode_data(config, task, self.raw, self.splits, self.lm))
            self.made.append(key)
        return [self.refs[key]]

    def stats(self) -> dict[str, Any]:
        """The encodings made here and the tokenization passes they took (cache misses)."""
        return {
            "encodings": list(self.made),
            "tokenization_passes": data_module.TOKENIZATION_PASSES,
        }


def start_store(raw: RawData, base_ref, known: dict[str, list]):
    """The sweep's `EncodingStore` actor, on the driver's node (where the files were read), with
    no CPU of its own (it works between the trials' requests), and the driver's tokenization
    cache (`SFT_TUNE_CACHE`: a Ray worker has the environment Ray started with); restarted if its
    process dies."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cache = (
        {"SFT_TUNE_CACHE": os.environ["SFT_TUNE_CACHE"]} if "SFT_TUNE_CACHE" in os.environ else {}
    )
    actor = ray.remote(EncodingStore).options(
        num_cpus=0,
        max_restarts=-1,
        max_task_retries=-1,
        runtime_env={"env_vars": cache},
        scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=True
        ),
    )
    return actor.remote([ray.put(raw)], [base_ref], known)
