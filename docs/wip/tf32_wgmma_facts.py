"""Compile checks (CPU, NVRTC sm_90a) behind docs/wip/2026-11-28-fp32-wgmma-plan.md: what wgmma accepts for TF32.
Prints one line per form. From the checkout root: python docs/wip/tf32_wgmma_facts.py"""
from cupyflash._nvrtc import compile_report

D = ",".join(f"%{i}" for i in range(32))
OUTS = ",".join(f'"+f"(d[{i}])' for i in range(32))
KERNEL = r'''
extern "C" __global__ void k(float* out, const unsigned* a, unsigned long long da, unsigned long long db) {
    float d[32];
    for (int i = 0; i < 32; ++i) d[i] = 0.f;
    unsigned a0 = a[threadIdx.x], a1 = a[threadIdx.x + 128], a2 = a[threadIdx.x + 256], a3 = a[threadIdx.x + 384];
    asm volatile("wgmma.fence.sync.aligned;\n");
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 {D}, OPERANDS;\n" : OUTS : INS);
    asm volatile("wgmma.commit_group.sync.aligned;\nwgmma.wait_group.sync.aligned 0;\n");
    for (int i = 0; i < 32; ++i) out[threadIdx.x * 32 + i] = d[i];
}
'''
FORMS = {  # name: (operands, inputs)
    "A, B from shared memory (descriptors), no transpose immediates": ("%32, %33, 1, 1, 1", '"l"(da), "l"(db)'),
    "the same with transpose immediates 0, 0": ("%32, %33, 1, 1, 1, 0, 0", '"l"(da), "l"(db)'),
    "the same with B transposed (0, 1)": ("%32, %33, 1, 1, 1, 0, 1", '"l"(da), "l"(db)'),
    "A from 4 registers a thread, B from shared memory": ("{%32, %33, %34, %35}, %36, 1, 1, 1",
                                                          '"r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(db)'),
}
for name, (operands, ins) in FORMS.items():
    src = (KERNEL.replace("{D}", "{" + D + "}").replace("OPERANDS", operands).replace("OUTS", OUTS)
           .replace("INS", ins))
    try:
        compile_report(src, ["k"], "sm_90a")
        print(f"accepted: {name}")
    except Exception as exc:  # ptxas: "Arguments mismatch for instruction 'wgmma.mma_async'"
        print(f"rejected: {name} ({str(exc).strip().splitlines()[-2].strip()})")
