"""One rank of the 2-process torch.distributed (gloo) test: python dist_worker.py RANK
WORLD PORT TARGET JOB OUT.json. Both ranks build the same tiny GPT-2 (fixed seed) and
the same probe; the Hugging Face SigmaCallback captures generations 0 and 1 (the model
perturbed in between), each rank forwarding its half of the probe batches."""
import json
import sys

import torch
import torch.distributed as dist
import transformers

from sigma_client.integrations.huggingface import SigmaCallback


def model_and_probe():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (48, 8), generator=g)
    mask = torch.ones(48, 8, dtype=torch.long)
    mask[::3, 4:] = 0
    return model, {"input_ids": ids, "attention_mask": mask}


def perturb(model):
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.mul_(0.25)


def main():
    rank, world, port, target, job, out = sys.argv[1:7]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=int(rank),
                            world_size=int(world))
    model, probe = model_and_probe()
    cb = SigmaCallback(target, job, ["transformer.h.0", "transformer.h.1"], probe, batch_size=8,
                       on_evaluate=False, wait=True)
    mon = next(iter(cb.schedule.probe.monitors.values()))
    reports = {}
    for k in range(2):
        cb.end_generation(model, k)
        reports[k] = {n: g.wait(120).to_dict() for n, g in cb.schedule.probe.last.items()}
        perturb(model)
    dist.barrier()
    cb.close()
    dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump({"rank": mon.rank, "world_size": mon.world_size, "reports": reports}, f)


if __name__ == "__main__":
    main()
