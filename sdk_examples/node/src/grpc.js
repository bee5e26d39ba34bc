'use strict';
/**
 * @grpc/grpc-js clients for the Perdure services, built from the generated descriptors in
 * gen/perdure/v1 (protobuf-es): every path, message and streaming flag comes from the contract.
 *
 *     const { JobsClient } = require('@perdure/node/grpc');
 *     const jobs = new JobsClient('127.0.0.1:7433', grpc.credentials.createInsecure());
 *     jobs.enqueue({ name: 'reports:build' }, (err, response) => { ... });
 *
 * Requests may be plain objects in the shape of the generated types (`create(Schema, init)`
 * is applied); responses are the generated messages.
 */

const grpc = require('@grpc/grpc-js');
const { create, fromBinary, toBinary } = require('@bufbuild/protobuf');
const { Jobs } = require('../gen/perdure/v1/jobs_pb.js');
const { Workers } = require('../gen/perdure/v1/workers_pb.js');
const { Schedules } = require('../gen/perdure/v1/schedules_pb.js');
const { Admin } = require('../gen/perdure/v1/admin_pb.js');

/**
 * The grpc-js service definition of a protobuf-es service descriptor.
 * @param {import('@bufbuild/protobuf').DescService} service
 * @returns {grpc.ServiceDefinition}
 */
function serviceDefinition(service) {
  /** @type {Record<string, grpc.MethodDefinition<any, any>>} */
  const definition = {};
  for (const method of service.methods) {
    const streamsIn = method.methodKind === 'client_streaming' || method.methodKind === 'bidi_streaming';
    const streamsOut = method.methodKind === 'server_streaming' || method.methodKind === 'bidi_streaming';
    definition[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: streamsIn,
      responseStream: streamsOut,
      requestSerialize: (message) => Buffer.from(toBinary(method.input, create(method.input, message))),
      requestDeserialize: (bytes) => fromBinary(method.input, bytes),
      responseSerialize: (message) => Buffer.from(toBinary(method.output, create(method.output, message))),
      responseDeserialize: (bytes) => fromBinary(method.output, bytes),
      originalName: method.name,
    };
  }
  return definition;
}

/**
 * A grpc-js client class for a service: methods named in lowerCamelCase (`enqueue`, `getJob`, `work`).
 * @param {import('@bufbuild/protobuf').DescService} service
 */
function clientConstructor(service) {
  return grpc.makeGenericClientConstructor(serviceDefinition(service), service.name);
}

const JobsClient = clientConstructor(Jobs);
const WorkersClient = clientConstructor(Workers);
const SchedulesClient = clientConstructor(Schedules);
const AdminClient = clientConstructor(Admin);

module.exports = {
  serviceDefinition, clientConstructor, JobsClient, WorkersClient, SchedulesClient, AdminClient,
  services: { Jobs, Workers, Schedules, Admin },
};
