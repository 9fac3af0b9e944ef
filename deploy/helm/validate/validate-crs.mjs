// Validates custom resources rendered by deploy/helm/check_chart.py (a JSON array of
// documents, argv[2]) against the CRD schemas that KEDA and Prometheus Operator publish,
// as packaged by kubernetes-models: types, required fields and enums. Unknown fields
// are not reported (Kubernetes prunes them; the CRD schemas allow them). Strimzi and
// Scylla Operator resources have no such package: check_chart.py checks their fields.
import { readFileSync } from 'node:fs';
import { ScaledObject, TriggerAuthentication } from '@kubernetes-models/keda/keda.sh/v1alpha1';
import { ServiceMonitor, PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';

const models = {
  'keda.sh/v1alpha1/ScaledObject': ScaledObject,
  'keda.sh/v1alpha1/TriggerAuthentication': TriggerAuthentication,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
  'monitoring.coreos.com/v1/PrometheusRule': PrometheusRule,
};
const docs = JSON.parse(readFileSync(process.argv[2], 'utf8'));
let checked = 0;
let failed = 0;
for (const doc of docs) {
  const Model = models[`${doc.apiVersion}/${doc.kind}`];
  if (!Model) continue;
  try {
    new Model(doc).validate();
    checked += 1;
  } catch (e) {
    failed += 1;
    console.error(`  FAIL ${doc.kind}/${doc.metadata?.name}: ${e.message}`);
  }
}
if (checked + failed === 0) {
  console.error('  FAIL no KEDA or Prometheus Operator resource to validate');
  process.exit(1);
}
console.log(`  ok   ${checked} KEDA and Prometheus Operator resources match their CRD schemas`);
process.exit(failed ? 1 : 0);
