/**
 * What 16-bit device storage alone costs, on the CPU: a backend that runs each node on the CPU
 * backend with its inputs and its output rounded to the storage type, as the CUDA backend stores
 * every tensor (float32 arithmetic inside a kernel, one rounding per stored value). A correct
 * device run of a deep graph comes close to this backend's error, whatever the graph amplifies;
 * longshot-check's `stage.emulated` is the same idea in C++.
 *
 * It rounds the input arrays in place: give it its own copies of weights and inputs.
 */
import { cpuBackend, type Backend, type CudaStorage, type OpNode } from '@longshot/engine';
import { roundToStorage } from './cases';

export class StorageEmulation implements Backend {
  readonly name: string;
  private readonly cpu = cpuBackend();

  constructor(private readonly storage: Exclude<CudaStorage, 'f32'>) {
    this.name = `cpu, ${storage} storage emulated`;
  }

  supportsOp(node: OpNode): boolean {
    return this.cpu.supportsOp(node);
  }

  run(nodes: readonly OpNode[]): Promise<void> {
    this.runSync(nodes);
    return Promise.resolve();
  }

  runSync(nodes: readonly OpNode[]): void {
    for (const n of nodes) {
      for (const t of n.inputs) if (t) t.set(roundToStorage(t, this.storage));
      this.cpu.runSync([n]);
      n.output.set(roundToStorage(n.output, this.storage));
    }
  }
}
