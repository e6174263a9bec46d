import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import * as path from 'node:path';

/**
 * Children that die with their parent, however the parent ends (SIGKILL included): the local
 * redis-server, and the controllers and workers `longshot render`/`up` start. Node cannot set
 * PR_SET_PDEATHSIG itself, so the child is started through util-linux `setpriv --pdeathsig
 * SIGKILL`, which sets it and then execs the program: the child keeps its own PID (no wrapper
 * process stays behind) and the kernel kills it when the thread that spawned it — Node's main
 * thread, i.e. the parent process — exits. Where setpriv is missing (not Linux) the child is
 * spawned plainly and only the parent's own stop/exit handlers stop it.
 */
export function spawnTied(command: string, args: readonly string[], options: SpawnOptions): ChildProcess {
  setpriv ??= process.platform === 'linux' ? onPath('setpriv') : null;
  // A program that is not there is spawned plainly, so the caller sees spawn's own ENOENT.
  const program = setpriv ? onPath(command) : null;
  return setpriv && program ? spawn(setpriv, ['--pdeathsig', 'SIGKILL', '--', program, ...args], options) : spawn(command, args, options);
}

let setpriv: string | null | undefined;

/** Whether children spawned by spawnTied die with this process. */
export function tiedToParent(): boolean {
  setpriv ??= process.platform === 'linux' ? onPath('setpriv') : null;
  return setpriv !== null;
}

/** The executable `command` names (a path, or a name looked up on PATH), or null. */
function onPath(command: string): string | null {
  const candidates = command.includes('/') ? [command] : (process.env.PATH ?? '').split(path.delimiter).filter(Boolean).map((dir) => path.join(dir, command));
  for (const file of candidates) {
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  return null;
}
