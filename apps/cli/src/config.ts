import { keySchemaOf, type KeySchema } from '@longshot/cache';
import { engineSettingsFromEnv, type EngineSettings } from '@longshot/engine';
import { parseLogLevel, type LogLevel } from '@longshot/telemetry';

/**
 * What the CLI reads from its environment besides its commands' flags (docs/configuration.md),
 * checked once: main applies the log level and engine settings before a command runs.
 */
export interface CliConfig {
  /** The Redis keys' root of the cluster the CLI talks to or starts (LONGSHOT_KEY_ROOT). */
  readonly keys: KeySchema;
  readonly logLevel: LogLevel;
  /** This machine's engine (longshot render on one machine, encode, decode). */
  readonly engine: EngineSettings;
}

export function loadCliConfig(env: NodeJS.ProcessEnv): CliConfig {
  return { keys: keySchemaOf(env.LONGSHOT_KEY_ROOT, 'LONGSHOT_KEY_ROOT'), logLevel: parseLogLevel(env.LONGSHOT_LOG_LEVEL), engine: engineSettingsFromEnv(env) };
}
