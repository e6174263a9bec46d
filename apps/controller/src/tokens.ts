/**
 * Injection tokens. Every constructor parameter names its token with @Inject, so Nest needs no
 * emitted type metadata (the sources run through loaders that do not emit it).
 */
export const CONFIG = Symbol('ControllerConfig');
export const REDIS = Symbol('Redis');
/** A second connection for pub/sub (a subscribed connection can issue nothing else). */
export const REDIS_SUBSCRIBER = Symbol('RedisSubscriber');
/** The connection the replica's one shared SSE reader blocks on (EventHub). */
export const REDIS_EVENTS = Symbol('RedisEvents');
export const JOBS = Symbol('JobStore');
export const LEASES = Symbol('WorkerLeases');
export const REGISTRY = Symbol('WorkerRegistry');
export const JOB_DATA = Symbol('JobDataRepository');
export const RESULTS = Symbol('ResultStore');
/** The ModelCatalog: model names clients may send. */
export const MODELS = Symbol('ModelCatalog');
export const UPLOADS = Symbol('UploadRepository');
/** The WebhookOutbox (Redis): jobs with a webhook and how far their delivery got. */
export const WEBHOOK_OUTBOX = Symbol('WebhookOutbox');
/** The DestinationGuard: which addresses webhooks may reach. */
export const WEBHOOK_GUARD = Symbol('DestinationGuard');
/** The WebhookSender: the outbound HTTP adapter. */
export const WEBHOOK_SENDER = Symbol('WebhookSender');
/** WebhookSecretGenerations (Redis): the generation of each tenant's webhook signing secret. */
export const WEBHOOK_SECRET_GENERATIONS = Symbol('WebhookSecretGenerations');
/** The ApiKeyStore: API keys (hashes) in Redis. */
export const API_KEYS = Symbol('ApiKeyStore');
export const RATE_LIMITER = Symbol('RateLimiter');
