export { GRPC_LIMITS, channelOptions, serverOptions } from './limits';
export { createWorkerClient, workerServiceDefinition, type WorkerClient, type WorkerServer, type WorkerClientOptions } from './client';
export { encodePayload, decodePayload, dtypeBytes, toWireDtype, fromWireDtype, type PayloadDtype } from './codec';
export { serializeActivationFrame, deserializeActivationFrame } from './frames';
export { TransportError, type StreamRejection } from './errors';
export {
  TensorSender,
  DEFAULT_ACK_TIMEOUT_MS,
  DEFAULT_CHUNK_BYTES,
  DEFAULT_SEND_WINDOW,
  type TensorBytesSender,
  type TensorSendHeader,
  type TensorSenderOptions,
} from './sender';
export {
  TensorReceiver,
  activationsHandler,
  DEFAULT_MAX_QUEUED,
  DEFAULT_MAX_TENSOR_BYTES,
  type ReceivedTensor,
  type StreamOutcome,
  type TensorReceiverOptions,
} from './receiver';
export { raiseReceiveWindow, receiveWindowOf } from './window';
export { addHealthService, checkHealth, type CheckHealthOptions, type ServingStatus, type ServingStatusMap } from './health';
export * from './gen/longshot/v1/worker';
export { componentTensor, componentValues, runComponent, type ComponentResult, type ComponentValues } from './component';
export {
  DataPlaneListener,
  DataPlaneSender,
  DEFAULT_DATA_PLANE_STALL_MS,
  DEFAULT_SHM_RING,
  DATA_PLANE_MODES,
  HOP_TRANSPORTS,
  chooseHopTransport,
  sameHostShm,
  ncclAvailability,
  dataPlaneEndpoint,
  dataPlaneKeys,
  fromWireTransport,
  toWireTransport,
  type DataPlaneMode,
  type NcclAvailability,
  type HopTransport,
  type DataPlaneKeys,
  type DataPlaneListenerOptions,
  type DataPlaneSenderOptions,
  type DataPlaneTransfer,
} from './dataplane';
export { GRANT_ERROR_REASONS, GrantError, parseGrantKeys, signGrant, verifyGrant, type GrantKey, type SessionGrant } from './grants';
export { loadTlsFiles, tlsCredentials, type TlsFiles } from './tls';
